/**
 * What a claimed run costs a job when it ends for a reason that is not the job's fault:
 * a service condition parks it, a shutdown releases it, neither spends an attempt; a worker that
 * keeps dying still does (worker.retry.test.ts).
 */
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ServiceConditionError, TransientError } from "../../src/errors.ts";
import type { JobRunOutcome } from "../../src/worker/BaseWorker.ts";
import { CLAIM_NEXT_JOB_SQL } from "../../src/worker/queries.ts";
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

const circuitOpen = () => new ServiceConditionError("openai", "circuit_open", "openai circuit is open", { code: "circuit_open", retryAfterMs: 5_000 });

describe("a service outage is not the document's fault", () => {
  it("a parked job spends no attempt, keeps its crash count, never dead-letters, and comes back when the breaker probes", async () => {
    const clock = new ManualClock(Date.parse("2040-01-01T00:00:00Z"));
    const job = await seedJob(db.pool, { status: "chunks_stored", maxAttempts: 2 });
    await makeDue(db.pool, job.jobId, clock.now());
    // One earlier life died on this job without recording anything: that attempt stays spent.
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET attempts = 1 WHERE job_id = $1", [job.jobId]);
    let outage = true;
    const outcomes: JobRunOutcome[] = [];
    const worker = testWorker(
      db.pool,
      noopStages({
        during(ctx) {
          if (ctx.job.status === "chunks_stored" && outage) throw circuitOpen();
        },
      }),
      { clock, random: () => 0.5, retryBaseMs: 1000, onJobDone: (e) => outcomes.push(e.outcome) },
    );

    for (let i = 0; i < 6; i++) {
      expect((await worker.runOnce())?.job_id).toBe(job.jobId);
      const row = await jobRow(db.pool, job.jobId);
      expect(row).toMatchObject({ status: "chunks_stored", attempts: 1, locked_by: null });
      expect(row.last_error).toMatchObject({ class: "transient", code: "circuit_open" });
      // Parked until the breaker's probe (5 s), spread by up to one base delay.
      expect(row.next_attempt_at.getTime() - clock.now()).toBe(5_500);
      expect(await worker.runOnce()).toBeUndefined();
      await clock.advance(5_500);
    }
    expect(outcomes).toEqual(Array(6).fill("parked"));
    outage = false;
    await worker.runOnce();
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "complete" });
  });

  it("an ordinary transient failure still spends attempts and dead-letters", async () => {
    const clock = new ManualClock(Date.parse("2041-01-01T00:00:00Z"));
    const job = await seedJob(db.pool, { status: "chunks_stored", maxAttempts: 2 });
    await makeDue(db.pool, job.jobId, clock.now());
    const worker = testWorker(
      db.pool,
      noopStages({
        during(ctx) {
          if (ctx.job.status === "chunks_stored") throw new TransientError("openai_unavailable", "503", { status: 503 });
        },
      }),
      { clock, random: () => 0 },
    );
    await worker.runOnce();
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "chunks_stored", attempts: 1 });
    await worker.runOnce();
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "failed_embedding", attempts: 2 });
  });
});

/** A pool whose claim statement waits for `gate` (so stop() can land while a claim is in flight). */
function gatedClaims(pool: pg.Pool, gate: Promise<void>, onClaim: () => void): pg.Pool {
  return new Proxy(pool, {
    get(target, key, receiver) {
      if (key !== "query") return Reflect.get(target, key, receiver);
      return async (...args: unknown[]) => {
        // The claim goes as a named statement (a query config), other statements as text.
        const text = typeof args[0] === "string" ? args[0] : (args[0] as pg.QueryConfig).text;
        if (text === CLAIM_NEXT_JOB_SQL) {
          onClaim();
          await gate;
        }
        return (target.query as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

describe("shutdown costs nothing", () => {
  it("a stage stopped between batches on its last attempt is released with no attempt spent, never dead-lettered", async () => {
    const job = await seedJob(db.pool, { status: "chunks_stored", maxAttempts: 1 });
    await makeDue(db.pool, job.jobId, new Date(Date.now() - 1000));
    let batches = 0;
    let stopping: Promise<void> | undefined;
    const worker = testWorker(
      db.pool,
      noopStages({
        async during(ctx) {
          if (ctx.job.status !== "chunks_stored") return;
          for (let i = 0; i < 50; i++) {
            ctx.checkpoint();
            batches += 1;
            if (i === 2) stopping = worker.stop(); // SIGTERM arrives during the third batch
            await new Promise((r) => setTimeout(r, 20));
          }
        },
      }),
      { shutdownTimeoutMs: 10_000 },
    );
    await worker.start();
    await expect.poll(() => batches, { timeout: 10_000 }).toBeGreaterThanOrEqual(3);
    await stopping;
    expect(batches).toBe(3);
    const row = await jobRow(db.pool, job.jobId);
    expect(row).toMatchObject({ status: "chunks_stored", attempts: 0, locked_by: null, lease_token: null });
    expect((await events(db.pool, job.jobId)).map((e) => e.to_status)).toEqual(["uploaded"]);
  });

  it("a stage that ignores the shutdown is aborted at the timeout and released with no attempt spent", async () => {
    const job = await seedJob(db.pool, { status: "parse_validated", maxAttempts: 1 });
    await makeDue(db.pool, job.jobId, new Date(Date.now() - 1000));
    let entered!: () => void;
    const inStage = new Promise<void>((r) => (entered = r));
    const worker = testWorker(
      db.pool,
      noopStages({
        async during(ctx) {
          if (ctx.job.status !== "parse_validated") return;
          entered();
          await new Promise(() => {}); // never returns, never looks at the signal
        },
      }),
      { shutdownTimeoutMs: 200 },
    );
    await worker.start();
    await inStage;
    await worker.stop();
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "parse_validated", attempts: 0, locked_by: null });
  });

  it("a slot stops claiming as soon as stop() is called: a claim in flight is handed straight back", async () => {
    const job = await seedJob(db.pool, { status: "parsed" });
    await makeDue(db.pool, job.jobId, new Date(Date.now() - 1000));
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let claiming!: () => void;
    const claimed = new Promise<void>((r) => (claiming = r));
    const ran: string[] = [];
    const worker = testWorker(
      gatedClaims(db.pool, gate, () => claiming()),
      noopStages({ during: (ctx) => void ran.push(ctx.job.status) }),
    );
    await worker.start();
    await claimed;
    const stopped = worker.stop();
    open();
    await stopped;
    expect(ran).toEqual([]);
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "parsed", attempts: 0, locked_by: null });
  });
});

describe("nothing hangs forever: the stage deadline", () => {
  it("a stage that makes no progress within the deadline is aborted, its lease handed back, and another worker completes the job", async () => {
    const job = await seedJob(db.pool, { status: "parse_validated" });
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET next_attempt_at = 'infinity' WHERE job_id <> $1", [job.jobId]); // earlier tests' jobs
    await makeDue(db.pool, job.jobId, new Date(Date.now() - 1000));
    let hung = false;
    const outcomes: Array<{ worker: string; outcome: JobRunOutcome }> = [];
    const stages = noopStages({
      async during(ctx) {
        if (ctx.job.status !== "parse_validated" || hung) return;
        hung = true;
        await new Promise(() => {}); // a call that never answers and ignores its signal
      },
    });
    const stuck = testWorker(db.pool, stages, {
      workerId: "stuck",
      stageDeadlineMs: 300,
      retryBaseMs: 10_000,
      random: () => 0.99,
      onJobDone: (e) => outcomes.push({ worker: "stuck", outcome: e.outcome }),
    });
    await stuck.start();
    await expect.poll(() => outcomes.length, { timeout: 10_000 }).toBe(1);
    await stuck.stop(); // the stuck stage is still pending: stop() must not wait for it
    expect(outcomes[0]).toEqual({ worker: "stuck", outcome: "stalled" });
    const handedBack = await jobRow(db.pool, job.jobId);
    expect(handedBack).toMatchObject({ status: "parse_validated", locked_by: null, attempts: 1 });
    expect(handedBack.last_error).toMatchObject({ code: "stage_stalled" });

    const other = testWorker(db.pool, stages, { workerId: "other" });
    await makeDue(db.pool, job.jobId, new Date(Date.now() - 1000));
    await other.runOnce();
    expect((await jobRow(db.pool, job.jobId)).status).toBe("complete");
    expect((await events(db.pool, job.jobId)).find((e) => e.from_status === "parse_validated")).toMatchObject({ to_status: "chunking", worker_id: "other" });
  });
});

describe("a frozen worker bills nothing twice", () => {
  it("checkLease refuses a lease that ran out while the worker was frozen, so the billed call is never made", async () => {
    const clock = new ManualClock(Date.parse("2042-01-01T00:00:00Z"));
    const job = await seedJob(db.pool, { status: "chunks_stored" });
    await makeDue(db.pool, job.jobId, clock.now());
    const billed: string[] = [];
    const outcomes: JobRunOutcome[] = [];
    const worker = testWorker(
      db.pool,
      noopStages({
        async during(ctx) {
          if (ctx.job.status !== "chunks_stored") return;
          await ctx.checkLease(); // fresh: ours
          await clock.advance(31_000); // frozen past the 30 s lease (no heartbeat ran)
          await ctx.checkLease();
          billed.push(ctx.job.job_id);
        },
      }),
      { clock, onJobDone: (e) => outcomes.push(e.outcome) },
    );
    await worker.runOnce();
    expect(billed).toEqual([]);
    expect(outcomes).toEqual(["lost"]);
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "chunks_stored" });
  });
});
