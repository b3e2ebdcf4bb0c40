/**
 * One process per command: `npm run worker|api|mocks|migrate` exec Node on the TypeScript file
 * (Node 24 strips the types), with no loader or shell process left between npm and the program,
 * so a SIGTERM a supervisor sends to the process it started reaches the program. Before, `kill
 * -TERM` of `npm run api` left the API's node process running on its port.
 */
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { readFileSync } from "node:fs";
import { relative, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WORKER_COMPILE_CACHE, WORKER_MALLOC_MMAP_THRESHOLD, WORKER_NODE_FLAGS } from "../src/worker/nodeFlags.ts";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { until } from "./support/until.ts";

const ROOT = resolve(import.meta.dirname, "..");

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

describe("production commands", () => {
  it("exec node on their entry file", () => {
    const { scripts } = JSON.parse(readFileSync(resolve(ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> };
    expect(scripts).toMatchObject({
      worker: `NODE_COMPILE_CACHE=\${NODE_COMPILE_CACHE:-${relative(ROOT, WORKER_COMPILE_CACHE)}} MALLOC_MMAP_THRESHOLD_=\${MALLOC_MMAP_THRESHOLD_:-${WORKER_MALLOC_MMAP_THRESHOLD}} exec node ${WORKER_NODE_FLAGS.join(" ")} src/worker/main.ts`,
      api: "exec node src/api/main.ts",
      mocks: "exec node mocks/main.ts",
      migrate: "exec node src/db/migrate.ts",
    });
  });

  it("SIGTERM to `npm run api` stops the API and frees its port", { timeout: 60_000 }, async () => {
    const port = await freePort();
    const npm = spawn("npm", ["run", "--silent", "api"], {
      cwd: ROOT,
      env: {
        ...process.env,
        DATABASE_URL: db.url,
        PORT: String(port),
        HOST: "127.0.0.1",
        OPENAI_API_KEY: "sk-test",
        LLAMA_CLOUD_API_KEY: "llx-test",
        SUPABASE_URL: "http://127.0.0.1:9",
        SUPABASE_SERVICE_ROLE_KEY: "service-role",
        SUPABASE_JWT_SECRET: "a-jwt-secret-of-at-least-thirty-two-characters",
        WEBHOOK_BASE_URL: "http://127.0.0.1:9",
        LOG_LEVEL: "info",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    npm.stdout.on("data", (c: Buffer) => (out += c.toString("utf8")));
    npm.stderr.on("data", (c: Buffer) => (out += c.toString("utf8")));
    const exited = new Promise<number | null>((ok) => npm.once("exit", (code) => ok(code)));
    await until("the API to listen", () => out.includes('"api listening"') || npm.exitCode !== null, { timeoutMs: 45_000, everyMs: 50 });
    expect(npm.exitCode, out).toBeNull();
    const listening = JSON.parse(out.split("\n").find((l) => l.includes('"api listening"'))!) as { address: string; pid: number };
    expect((await fetch(`${listening.address}/healthz`)).status).toBeLessThan(600);

    npm.kill("SIGTERM");
    await exited;
    const alive = () => {
      try {
        process.kill(listening.pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    try {
      await until("the API process to exit", () => !alive());
    } finally {
      if (alive()) process.kill(listening.pid, "SIGKILL"); // a failed run leaves no process behind
    }
    await expect(fetch(`${listening.address}/healthz`)).rejects.toThrow();
  });
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address() as { port: number };
  await new Promise((ok) => server.close(ok));
  return port;
}
