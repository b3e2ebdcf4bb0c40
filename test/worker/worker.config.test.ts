import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.ts";
import { ConfigError } from "../../src/errors.ts";

const VALID = {
  OPENAI_API_KEY: "sk-test-not-a-real-key",
  LLAMA_CLOUD_API_KEY: "llx-test",
  SUPABASE_URL: "https://abc.supabase.co",
  SUPABASE_SERVICE_ROLE_KEY: "service-role-test",
  WEBHOOK_BASE_URL: "https://api.example.com",
};

describe("configuration", () => {
  it("applies documented defaults to a minimal valid environment", () => {
    expect(loadConfig(VALID)).toMatchObject({
      OPENAI_BASE_URL: "https://api.openai.com/v1",
      STORAGE_BUCKET: "documents",
      EMBED_MODEL: "text-embedding-3-small",
      WORKER_CONCURRENCY: 4,
      LEASE_SECONDS: 60,
      MAX_ATTEMPTS: 5,
      LOG_LEVEL: "info",
    });
  });

  it("names every offending variable at once, says what it expects, and never echoes a value", () => {
    const secret = "sk-this-must-not-leak";
    let error: unknown;
    try {
      loadConfig({ ...VALID, OPENAI_API_KEY: secret, SUPABASE_URL: "not a url", LEASE_SECONDS: "soon", LLAMA_CLOUD_API_KEY: "" });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as ConfigError).message;
    expect((error as ConfigError).problems).toHaveLength(3);
    expect(message).toMatch(/SUPABASE_URL: is invalid; expected .*URL/);
    expect(message).toMatch(/LEASE_SECONDS: is invalid; expected a whole number from 5 to 3600/);
    expect(message).toMatch(/LLAMA_CLOUD_API_KEY: is not set/);
    expect(message).not.toContain(secret);
    expect(message).not.toContain("not a url");
  });

  it("`npm run worker` with a bad environment prints the problems and exits 2, without a stack trace", () => {
    const result = spawnSync(process.execPath, ["src/worker/main.ts"], {
      env: { PATH: process.env.PATH, OPENAI_API_KEY: "sk-secret-value", SUPABASE_URL: "ftp://x", WORKER_CONCURRENCY: "0" },
      encoding: "utf8",
      timeout: 20_000,
    });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("worker: Invalid configuration");
    for (const name of ["LLAMA_CLOUD_API_KEY", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "WEBHOOK_BASE_URL", "WORKER_CONCURRENCY"]) {
      expect(result.stderr).toContain(name);
    }
    expect(result.stderr).not.toContain("sk-secret-value");
    expect(result.stderr).not.toMatch(/\n\s+at /);
  });
});
