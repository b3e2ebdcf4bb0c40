/**
 * docker-compose.local.yml and the Dockerfile, checked without a Docker engine (none on these
 * machines): the file parses, every service of ours runs an npm script that exists, every
 * variable it sets is one the config schema knows, the image's Node matches `engines`, and
 * everything the image's entry points import is a production dependency (`npm ci --omit=dev`).
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { parse } from "yaml";
import { describe, expect, it } from "vitest";
import { configSchema } from "../../src/config.ts";
import { DEFAULT_JWT_SECRET } from "../../mocks/storage/jwt.ts";
import { signServiceRoleKey } from "../../mocks/index.ts";

interface Service {
  build?: string;
  image?: string;
  command?: string[];
  environment?: Record<string, string>;
  profiles?: string[];
}

const pkg = JSON.parse(await readFile("package.json", "utf8")) as {
  scripts: Record<string, string>;
  engines: { node: string };
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const compose = parse(await readFile("docker-compose.local.yml", "utf8"), { merge: true }) as { services: Record<string, Service> };
const ours = Object.entries(compose.services).filter(([, s]) => s.build === ".");

describe("docker-compose.local.yml", () => {
  it("has the database, migrations, mocks, API, a scalable worker and the scenario runner", () => {
    expect(Object.keys(compose.services).sort()).toEqual(["api", "db", "migrate", "mocks", "scenario", "worker"]);
    expect(compose.services.db!.image).toMatch(/^pgvector\/pgvector:pg(15|17)$/);
    // Scaling needs no fixed container name or host port on the worker.
    expect(compose.services.worker).not.toHaveProperty("container_name");
    expect(compose.services.worker).not.toHaveProperty("ports");
  });

  it("runs an npm script that exists in every service built from our image", () => {
    expect(ours.length).toBe(5);
    for (const [name, service] of ours) {
      const [npm, run, script] = service.command ?? [];
      expect({ name, npm, run }).toEqual({ name, npm: "npm", run: "run" });
      expect(Object.keys(pkg.scripts), `${name} runs npm run ${script}`).toContain(script);
    }
  });

  it("sets only variables the config schema knows, and the mocks' own service-role key", async () => {
    const known = Object.keys(configSchema.shape);
    for (const [name, service] of ours) {
      for (const variable of Object.keys(service.environment ?? {})) expect(known, `${name} sets ${variable}`).toContain(variable);
    }
    const env = compose.services.api!.environment!;
    expect(env.SUPABASE_JWT_SECRET).toBe(DEFAULT_JWT_SECRET);
    expect(env.SUPABASE_SERVICE_ROLE_KEY).toBe(await signServiceRoleKey(DEFAULT_JWT_SECRET));
    expect(env.DATABASE_URL).toBe("postgres://postgres:postgres@db:5432/postgres");
  });
});

describe("Dockerfile", () => {
  it("builds on the Node major that engines and the pinned node package name, with npm ci --omit=dev", async () => {
    const dockerfile = await readFile("Dockerfile", "utf8");
    const major = Number(/^FROM node:(\d+)/m.exec(dockerfile)![1]);
    expect(major).toBeGreaterThanOrEqual(Number(/^>=(\d+)$/.exec(pkg.engines.node)![1]));
    expect(major).toBe(Number(/^\^(\d+)\./.exec(pkg.devDependencies.node!)![1]));
    expect(dockerfile).toMatch(/^RUN npm ci --omit=dev\b/m);
  });

  it("the code the image runs imports only production dependencies", async () => {
    const files: string[] = [];
    for (const dir of ["src", "mocks", "harness", "dev"]) {
      for (const entry of await readdir(dir, { recursive: true })) if (entry.endsWith(".ts")) files.push(join(dir, entry));
    }
    const imported = new Set<string>();
    for (const file of files) {
      for (const m of (await readFile(file, "utf8")).matchAll(/^import (?!type )[^;]*? from "([^".][^"]*)";/gms)) {
        const spec = m[1]!;
        if (spec.startsWith("node:")) continue;
        imported.add(spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : spec.split("/")[0]!);
      }
    }
    expect(imported.size).toBeGreaterThan(10);
    expect([...imported].filter((name) => !(name in pkg.dependencies)).sort()).toEqual([]);
  });
});
