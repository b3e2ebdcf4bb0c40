/**
 * `npm run stack` as a new user runs it: one database, the mocks, the API and a worker in one
 * environment; the token and URL it prints take a first upload to `complete`; Ctrl-C stops it
 * all. And `npm run api` alone refuses a private embedded database unless told.
 */
import { spawn, spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";

const REQUIRED = {
  OPENAI_API_KEY: "sk-test",
  LLAMA_CLOUD_API_KEY: "llx-test",
  SUPABASE_URL: "http://127.0.0.1:9",
  SUPABASE_SERVICE_ROLE_KEY: "service-role-test",
  SUPABASE_JWT_SECRET: "super-secret-jwt-token-with-at-least-32-characters-long",
  WEBHOOK_BASE_URL: "http://127.0.0.1:9",
};

describe("npm run stack", () => {
  it("prints what a first upload needs, runs it to complete, and stops everything on Ctrl-C", async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: "warn" };
    delete env.DATABASE_URL;
    const stack = spawn(process.execPath, ["dev/stack.ts", "--workers", "1", "--api-port", "0", "--mocks-port", "0"], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    stack.stdout.on("data", (d: Buffer) => (out += d.toString()));
    stack.stderr.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => stack.on("exit", (code) => resolve(code)));
    const ready = await new Promise<string>((resolve, reject) => {
      const timer = setInterval(() => {
        if (out.includes("first upload:") && out.includes("/jobs/<document_id")) {
          clearInterval(timer);
          resolve(out);
        }
        if (stack.exitCode !== null) {
          clearInterval(timer);
          reject(new Error(`stack exited early:\n${out}`));
        }
      }, 100);
    });
    const api = /API\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(ready)![1]!;
    const token = /TOKEN=(\S+)/.exec(ready)![1]!;
    expect(ready).toMatch(/DATABASE_URL=postgres:\/\/\S+/);
    expect(ready).toContain(`curl -sS -X POST ${api}/upload -H "Authorization: Bearer ${token}"`);

    // What the printed curl does.
    const form = new FormData();
    form.append("file", new Blob([await readFile("README.md")], { type: "text/markdown" }), "README.md");
    const upload = await fetch(`${api}/upload`, { method: "POST", headers: { authorization: `Bearer ${token}` }, body: form });
    expect(upload.status).toBeLessThan(300);
    const { document_id } = (await upload.json()) as { document_id: string };
    let status = "";
    for (const deadline = Date.now() + 120_000; Date.now() < deadline && status !== "complete"; ) {
      await new Promise((r) => setTimeout(r, 500));
      const job = await fetch(`${api}/jobs/${document_id}`, { headers: { authorization: `Bearer ${token}` } });
      status = ((await job.json()) as { status: string }).status;
      expect(status).not.toMatch(/^failed_/);
    }
    expect(status).toBe("complete");

    stack.kill("SIGINT");
    expect(await exited).toBe(0);
    expect(out).toContain("stack: stopped");
    expect(
      await fetch(`${api}/healthz`).then(
        () => "answered",
        () => "gone",
      ),
    ).toBe("gone");
  }, 240_000);

  it("refuses a bad flag, naming it", () => {
    const result = spawnSync(process.execPath, ["dev/stack.ts", "--workers", "0"], { encoding: "utf8", timeout: 30_000 });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("--workers takes a whole number from 1 to 32 (got '0')");
  });
});

describe("npm run api without DATABASE_URL", () => {
  it("refuses to start on a private embedded database, saying what to run instead", () => {
    const env: NodeJS.ProcessEnv = { ...process.env, ...REQUIRED };
    delete env.DATABASE_URL;
    const result = spawnSync(process.execPath, ["src/api/main.ts"], { env, encoding: "utf8", timeout: 30_000 });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("DATABASE_URL is not set");
    expect(result.stderr).toContain("npm run stack");
    expect(result.stderr).toContain("ALLOW_PRIVATE_DATABASE=true");
    expect(result.stderr).not.toMatch(/\n\s+at /);
  });
});
