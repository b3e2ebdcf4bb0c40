import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { events, jobRow, seedJob } from "../support/fixtures.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

describe("graceful shutdown", () => {
  it("SIGTERM lets the current step finish, releases the lease without spending an attempt and exits 0", async () => {
    const job = await seedJob(db.pool);
    const child = spawn(process.execPath, ["test/worker/fixtures/slowWorker.ts"], {
      env: { ...process.env, DATABASE_URL: db.url, STEP_MS: "1500" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    const started = new Promise<void>((resolve) => {
      child.stdout.on("data", (b: Buffer) => {
        stdout += b.toString();
        if (stdout.includes("STEP_STARTED")) resolve();
      });
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    await started;
    expect((await jobRow(db.pool, job.jobId)).locked_by).toBe("slow");
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    const row = await jobRow(db.pool, job.jobId);
    // The running step completed; the worker did not go on to the next stage, and let go without
    // spending an attempt (the claim had become the next stage's first): a deploy costs a job none.
    expect(row).toMatchObject({ status: "parse_queued", locked_by: null, lease_token: null, attempts: 0 });
    expect((await events(db.pool, job.jobId)).map((e) => e.to_status)).toEqual(["uploaded", "parse_queued"]);
    expect(stdout).toContain("worker stopped");
  });
});
