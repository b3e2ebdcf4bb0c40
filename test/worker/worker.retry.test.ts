import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PermanentError, TransientError } from "../../src/errors.ts";
import { backoffDelayMs } from "../../src/worker/backoff.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { events, jobRow, makeDue, seedJob } from "../support/fixtures.ts";
import { noopStages } from "../support/noopStages.ts";
import { testWorker } from "../support/worker.ts";
import { ManualClock } from "../../src/resilience/clock.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

describe("retries and the dead letter", () => {
  it("backoff grows exponentially, is capped, and jitters within [0, ceiling)", () => {
    const top = (attempt: number) => backoffDelayMs(attempt, { baseMs: 1000, maxMs: 10_000, random: () => 0.999999 });
    expect([1, 2, 3, 4, 5, 6].map(top)).toEqual([999, 1999, 3999, 7999, 9999, 9999]);
    expect(backoffDelayMs(3, { baseMs: 1000, maxMs: 10_000, random: () => 0 })).toBe(0);
    expect(backoffDelayMs(1, { baseMs: 1000, maxMs: 10_000, random: () => 0, retryAfterMs: 2500 })).toBe(2500);
  });

  it("transient errors retry with growing delays, then land in the stage's failed_* with last_error", async () => {
    const clock = new ManualClock(Date.parse("2032-01-01T00:00:00Z"));
    const job = await seedJob(db.pool, { status: "chunks_stored", maxAttempts: 3 });
    await makeDue(db.pool, job.jobId, clock.now());
    const stages = noopStages({
      during(ctx) {
        if (ctx.job.status === "chunks_stored") throw new TransientError("http_503", "embeddings API answered 503");
      },
    });
    const worker = testWorker(db.pool, stages, { clock, random: () => 0.999999, retryBaseMs: 1000 });

    const delays: number[] = [];
    for (let attempt = 1; attempt <= 2; attempt++) {
      expect((await worker.runOnce())?.job_id).toBe(job.jobId);
      const row = await jobRow(db.pool, job.jobId);
      expect(row).toMatchObject({ status: "chunks_stored", attempts: attempt, locked_by: null });
      expect(row.last_error).toMatchObject({ class: "transient", code: "http_503", stage: "chunks_stored", attempt });
      const delay = row.next_attempt_at.getTime() - clock.now();
      delays.push(delay);
      expect(await worker.runOnce()).toBeUndefined(); // not due yet
      await clock.advance(delay);
    }
    expect(delays[1]).toBeGreaterThan(delays[0]!);
    await worker.runOnce(); // third and last attempt
    const failed = await jobRow(db.pool, job.jobId);
    expect(failed).toMatchObject({ status: "failed_embedding", attempts: 3, locked_by: null });
    expect(failed.last_error).toMatchObject({ class: "transient", code: "http_503", stage: "chunks_stored", attempt: 3 });
    expect(failed.last_error.correlation_id).toBe(failed.correlation_id);
    expect((await events(db.pool, job.jobId)).at(-1)).toMatchObject({
      from_status: "chunks_stored",
      to_status: "failed_embedding",
      detail: expect.objectContaining({ reason: "attempts_exhausted" }),
    });
  });

  it("a transient error whose server asked for a longer wait (retry-after) is retried no sooner than that", async () => {
    const clock = new ManualClock(Date.parse("2032-06-01T00:00:00Z"));
    const job = await seedJob(db.pool, { status: "chunks_stored" });
    await makeDue(db.pool, job.jobId, clock.now());
    let answered503 = false;
    const stages = noopStages({
      during() {
        if (answered503) return;
        answered503 = true;
        throw new TransientError("http_503", "embeddings API answered 503, retry-after: 120", { retryAfterMs: 120_000 });
      },
    });
    const worker = testWorker(db.pool, stages, { clock, retryBaseMs: 1000 });
    expect((await worker.runOnce())?.job_id).toBe(job.jobId);
    const row = await jobRow(db.pool, job.jobId);
    expect(row).toMatchObject({ status: "chunks_stored", attempts: 1 });
    expect(row.next_attempt_at.getTime() - clock.now()).toBeGreaterThanOrEqual(120_000);
    await clock.advance(119_000);
    expect(await worker.runOnce()).toBeUndefined();
    await clock.advance(1_000);
    expect((await worker.runOnce())?.job_id).toBe(job.jobId);
    expect((await jobRow(db.pool, job.jobId)).status).toBe("complete");
  });

  it("a permanent error fails the job at once, in the failed state of its stage", async () => {
    const clock = new ManualClock(Date.parse("2033-01-01T00:00:00Z"));
    const job = await seedJob(db.pool, { status: "parsed" });
    await makeDue(db.pool, job.jobId, clock.now());
    const worker = testWorker(
      db.pool,
      noopStages({
        during(ctx) {
          if (ctx.job.status === "parsed") throw new PermanentError("parse_empty", "parsed markdown is empty");
        },
      }),
      { clock },
    );
    await worker.runOnce();
    const row = await jobRow(db.pool, job.jobId);
    expect(row).toMatchObject({ status: "failed_parse", attempts: 1 });
    expect(row.last_error).toMatchObject({ class: "permanent", code: "parse_empty", message: "parsed markdown is empty" });
  });

  it("a job whose workers keep dying is dead-lettered once its attempts are spent", async () => {
    const clock = new ManualClock(Date.parse("2034-01-01T00:00:00Z"));
    const job = await seedJob(db.pool, { status: "parse_validated", maxAttempts: 2 });
    await makeDue(db.pool, job.jobId, clock.now());
    // Simulate three claims that died without recording anything.
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET attempts = 2 WHERE job_id = $1", [job.jobId]);
    await testWorker(db.pool, noopStages(), { clock }).runOnce();
    const row = await jobRow(db.pool, job.jobId);
    expect(row.status).toBe("failed_chunking");
    expect(row.last_error.message).toMatch(/attempts exhausted/);
  });

  it("forward progress resets the attempt count", async () => {
    const clock = new ManualClock(Date.parse("2035-01-01T00:00:00Z"));
    const job = await seedJob(db.pool, { status: "embeddings_stored" });
    await makeDue(db.pool, job.jobId, clock.now());
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET attempts = 3 WHERE job_id = $1", [job.jobId]);
    await testWorker(db.pool, noopStages(), { clock }).runOnce();
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "complete", attempts: 0 });
  });

  it("a failure that cannot be recorded because the database is briefly unreachable is recorded once it is back, not left to the lease", async () => {
    const job = await seedJob(db.pool, { status: "chunks_stored" });
    let unreachable = 0;
    // The pool as a Postgres restart leaves it: the next statements fail to connect.
    const flakyPool = new Proxy(db.pool, {
      get(target, prop) {
        if (prop !== "query") return Reflect.get(target, prop, target);
        return (...args: Parameters<typeof target.query>) => {
          if (unreachable > 0) {
            unreachable--;
            return Promise.reject(Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" }));
          }
          return (target.query as (...a: unknown[]) => unknown)(...args);
        };
      },
    });
    const stages = noopStages({
      during(ctx) {
        if (ctx.job.status !== "chunks_stored") return;
        unreachable = 2;
        throw new TransientError("http_503", "embeddings API answered 503");
      },
    });
    const worker = testWorker(flakyPool, stages, { leaseSeconds: 30 });
    expect((await worker.runOnce())?.job_id).toBe(job.jobId);
    expect(unreachable).toBe(0); // both refused statements really happened
    const row = await jobRow(db.pool, job.jobId);
    expect(row).toMatchObject({ status: "chunks_stored", locked_by: null, lease_token: null, attempts: 1 });
    expect(row.last_error).toMatchObject({ class: "transient", code: "http_503" });
  });
});
