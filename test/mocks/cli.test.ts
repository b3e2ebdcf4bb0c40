/**
 * `npm run mocks` (mocks/main.ts): prints the env lines, serves, stops on SIGTERM; bad flags
 * exit 2 with a message naming the flag and no stack trace.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "../..");
const MAIN = join(ROOT, "mocks/main.ts");

function runBad(args: string[]) {
  const result = spawnSync(process.execPath, [MAIN, ...args], { cwd: ROOT, encoding: "utf8", timeout: 20_000 });
  return { code: result.status, stderr: result.stderr, stdout: result.stdout };
}

describe("npm run mocks", () => {
  it("prints the worker's env lines, serves them, and exits 0 on SIGTERM", async () => {
    const child = spawn(process.execPath, [MAIN, "--port", "0", "--seed", "4"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.setEncoding("utf8");
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`no env lines in time: ${out}`)), 20_000);
      child.stdout.on("data", (chunk: string) => {
        out += chunk;
        if (out.includes("SUPABASE_SERVICE_ROLE_KEY=")) {
          clearTimeout(timer);
          ok();
        }
      });
    });
    const env = Object.fromEntries(
      out
        .trim()
        .split("\n")
        .map((line) => line.split(/=(.*)/s).slice(0, 2) as [string, string]),
    );
    expect(Object.keys(env)).toEqual([
      "OPENAI_BASE_URL",
      "OPENAI_API_KEY",
      "LLAMA_CLOUD_BASE_URL",
      "LLAMA_CLOUD_API_KEY",
      "SUPABASE_URL",
      "SUPABASE_SERVICE_ROLE_KEY",
    ]);
    expect(env.OPENAI_BASE_URL).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
    expect(env.SUPABASE_URL).toBe(env.LLAMA_CLOUD_BASE_URL);
    const health = await fetch(`${env.SUPABASE_URL}/__admin/health`);
    expect(await health.json()).toEqual({ ok: true });
    const code = new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    child.kill("SIGTERM");
    expect(await code).toBe(0);
  });

  it("rejects an unknown flag with exit 2, naming it, without a stack trace", () => {
    const { code, stderr } = runBad(["--prot", "4010"]);
    expect(code).toBe(2);
    expect(stderr).toContain("--prot");
    expect(stderr).not.toMatch(/\n\s+at /);
  });

  it("rejects a bad port value", () => {
    const { code, stderr } = runBad(["--port", "70000"]);
    expect(code).toBe(2);
    expect(stderr).toContain("--port must be an integer from 0 to 65535");
  });

  it("rejects bad bucket limits, naming the flag", () => {
    const size = runBad(["--bucket-max-bytes", "0"]);
    expect(size.code).toBe(2);
    expect(size.stderr).toContain("--bucket-max-bytes must be an integer from 1");
    const mime = runBad(["--bucket-mime", "pdf, text"]);
    expect(mime.code).toBe(2);
    expect(mime.stderr).toContain("--bucket-mime must be comma-separated MIME types");
  });

  it("rejects an invalid fault plan file, naming the field", () => {
    const dir = mkdtempSync(join(tmpdir(), "mocks-cli-"));
    const file = join(dir, "plan.json");
    writeFileSync(file, JSON.stringify({ openai: { errors: [{ fault: 503, rate: 7 }] } }));
    const { code, stderr } = runBad(["--faults", file]);
    expect(code).toBe(2);
    expect(stderr).toContain("--faults: invalid fault plan: openai.errors[0].rate");
    expect(stderr).not.toMatch(/\n\s+at /);
  });
});
