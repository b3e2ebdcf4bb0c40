import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PIPELINE_STATES } from "../../src/state-machine/table.ts";
import { FaultInjector } from "../../src/worker/faultPoints.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { until } from "../support/until.ts";
import { events, jobRow, makeDue, seedJob } from "../support/fixtures.ts";
import { noopStages } from "../support/noopStages.ts";
import { testWorker } from "../support/worker.ts";
import { ManualClock } from "../../src/resilience/clock.ts";
import { claimNextJob } from "../../src/worker/queries.ts";
import { LeaseLostError } from "../../src/errors.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

describe("claiming", () => {
  it("two workers with four slots each never hold one job at once, and every job completes", async () => {
    const jobs = await Promise.all(Array.from({ length: 24 }, () => seedJob(db.pool)));
    const holders = new Map<string, string>();
    const overlaps: string[] = [];
    const stages = noopStages({
      async during(ctx) {
        const key = ctx.job.job_id;
        if (holders.has(key)) overlaps.push(`${key} held by ${holders.get(key)} and ${ctx.workerId}`);
        holders.set(key, ctx.workerId);
        await new Promise((r) => setTimeout(r, 2));
        holders.delete(key);
      },
    });
    const workers = [1, 2].map((n) => testWorker(db.pool, stages, { workerId: `w${n}`, concurrency: 4, databaseUrl: db.url }));
    await Promise.all(workers.map((w) => w.start()));
    const ids = jobs.map((j) => j.jobId);
    await until(
      "every job to complete",
      async () => {
        const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM upload_pipeline.upload_jobs WHERE job_id = ANY($1) AND status = 'complete'", [
          ids,
        ]);
        return rows[0].n === ids.length;
      },
      { timeoutMs: 20_000 },
    );
    await Promise.all(workers.map((w) => w.stop()));
    expect(overlaps).toEqual([]);
    // Both workers did work, and each event was written under the lease of the worker that held it.
    const { rows } = await db.pool.query("SELECT DISTINCT worker_id FROM upload_pipeline.job_events WHERE job_id = ANY($1) AND worker_id LIKE 'w%'", [ids]);
    expect(rows.map((r) => r.worker_id).sort()).toEqual(["w1", "w2"]);
    for (const id of ids) {
      expect((await events(db.pool, id)).map((e) => e.to_status)).toEqual([...PIPELINE_STATES]);
      expect(await jobRow(db.pool, id)).toMatchObject({ locked_by: null, lease_token: null, attempts: 0 });
    }
  });

  it("a job whose worker stops heartbeating is taken over once its lease expires, not before", async () => {
    const clock = new ManualClock(Date.parse("2030-01-01T00:00:00Z"));
    const job = await seedJob(db.pool);
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET next_attempt_at = $2 WHERE job_id = $1", [job.jobId, new Date(clock.now())]);
    const crashing = testWorker(db.pool, noopStages(), {
      workerId: "dies",
      clock,
      leaseSeconds: 30,
      faults: new FaultInjector([{ point: "stage.parsed.before", action: "crash" }]),
    });
    const survivor = testWorker(db.pool, noopStages(), { workerId: "survivor", clock, leaseSeconds: 30 });

    await crashing.runOnce(); // uploaded → parse_queued → parsed, then dies holding the lease
    const held = await jobRow(db.pool, job.jobId);
    expect(held).toMatchObject({ status: "parsed", locked_by: "dies" });

    await clock.advance(29_000);
    expect(await survivor.runOnce()).toBeUndefined(); // lease still live
    await clock.advance(2_000);
    const taken = await survivor.runOnce();
    expect(taken?.job_id).toBe(job.jobId);
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "complete", locked_by: null });
    const evs = await events(db.pool, job.jobId);
    expect(evs.find((e) => e.from_status === "parsed")?.worker_id).toBe("survivor");
  });

  it("a worker that lost its lease cannot write: neither its fenced batch nor its transition changes anything", async () => {
    const clock = new ManualClock(Date.parse("2031-01-01T00:00:00Z"));
    const job = await seedJob(db.pool);
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET next_attempt_at = $2 WHERE job_id = $1", [job.jobId, new Date(clock.now())]);
    let resumePaused!: () => void;
    let paused!: () => void;
    const isPaused = new Promise<void>((r) => (paused = r));
    let staleBatch: unknown;
    const stale = noopStages({
      // Resumed after the takeover: a batch write (as the chunk and embed stages commit theirs) first.
      async during(ctx) {
        try {
          await ctx.fenced(({ client }) =>
            client.query(`UPDATE upload_pipeline.upload_jobs SET progress = progress || '{"stale_batch": 1}' WHERE job_id = $1`, [ctx.job.job_id]),
          );
        } catch (err) {
          staleBatch = err;
        }
      },
    });
    const slow = testWorker(db.pool, stale, {
      workerId: "paused",
      clock,
      leaseSeconds: 30,
      faults: new FaultInjector([
        {
          point: "stage.uploaded.before",
          action: () =>
            new Promise<void>((r) => {
              resumePaused = r;
              paused();
            }),
        },
      ]),
    });
    const other = testWorker(db.pool, noopStages(), { workerId: "other", clock, leaseSeconds: 30 });
    const pausedRun = slow.runOnce();
    await isPaused;
    await clock.advance(31_000); // the paused worker's lease has expired
    await other.runOnce(); // takes over and finishes the job
    resumePaused();
    await pausedRun; // its writes are fenced out
    expect(staleBatch).toBeInstanceOf(LeaseLostError);
    expect((await jobRow(db.pool, job.jobId)).progress).not.toHaveProperty("stale_batch");
    const evs = await events(db.pool, job.jobId);
    expect(evs.filter((e) => e.worker_id === "paused")).toEqual([]);
    expect(evs.at(-1)!.to_status).toBe("complete");
    expect(evs.filter((e) => e.to_status === "parse_queued")).toHaveLength(1);
  });

  it("a claim skips a job whose row another transaction holds locked (SKIP LOCKED), instead of waiting for it", async () => {
    const [head, next] = [await seedJob(db.pool), await seedJob(db.pool)];
    // The two at the head of the queue, in this order.
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET fair_tag = -1000 - (job_id = $2)::int WHERE job_id IN ($1, $2)", [next.jobId, head.jobId]);
    const holder = await db.pool.connect(); // e.g. the webhook handler, which locks the job row while it records a delivery
    const claimer = await db.pool.connect();
    try {
      await holder.query("BEGIN");
      await holder.query("SELECT 1 FROM upload_pipeline.upload_jobs WHERE job_id = $1 FOR UPDATE", [head.jobId]);
      // A claim that waited for the row lock would fail here instead of returning.
      await claimer.query("SET lock_timeout = '200ms'");
      const claimed = await claimNextJob(claimer, { workerId: "skipper", leaseSeconds: 30 });
      expect(claimed?.job_id).toBe(next.jobId);
      await holder.query("ROLLBACK");
      expect((await claimNextJob(claimer, { workerId: "skipper", leaseSeconds: 30 }))?.job_id).toBe(head.jobId);
    } finally {
      await holder.query("ROLLBACK").catch(() => {});
      await claimer.query("RESET lock_timeout");
      holder.release();
      claimer.release();
    }
  });
});

describe("heartbeats", () => {
  it("a heartbeat that finds the lease taken aborts the running stage: the run ends as lost and leaves the new holder alone", async () => {
    const job = await seedJob(db.pool);
    let running!: () => void;
    const isRunning = new Promise<void>((r) => (running = r));
    const stages = noopStages({
      during: (ctx) =>
        new Promise<void>((_, reject) => {
          // A stage in a long call: it ends only when the worker aborts it.
          ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason), { once: true });
          running();
        }),
    });
    const outcomes: string[] = [];
    const worker = testWorker(db.pool, stages, { workerId: "beating", leaseSeconds: 1, onJobDone: (e) => outcomes.push(e.outcome) });
    const run = worker.runOnce();
    await isRunning;
    // Another worker took the job over (as after an expiry): the token is no longer ours.
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET locked_by = 'thief', lease_token = gen_random_uuid() WHERE job_id = $1", [job.jobId]);
    await run;
    expect(outcomes).toEqual(["lost"]);
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ status: "uploaded", locked_by: "thief" });
  });
});

describe("the lease check before a billed call", () => {
  it("refuses a lease that runs out while its answer is on the way (measured on the worker's own clock too)", async () => {
    const clock = new ManualClock(Date.parse("2036-01-01T00:00:00Z"));
    const job = await seedJob(db.pool);
    await makeDue(db.pool, job.jobId, clock.now());
    let checked: unknown = "not checked";
    let spare: unknown = "not checked";
    const stages = noopStages({
      async during(ctx) {
        if (ctx.job.status !== "uploaded") return;
        // The database answers "1 µs left": any round trip outlasts that, so the lease may be gone by the time the call would go out.
        await db.pool.query("UPDATE upload_pipeline.upload_jobs SET lease_expires_at = $2::timestamptz + interval '1 microsecond' WHERE job_id = $1", [
          ctx.job.job_id,
          new Date(clock.now()),
        ]);
        checked = await ctx.checkLease().catch((err: unknown) => err);
        await db.pool.query("UPDATE upload_pipeline.upload_jobs SET lease_expires_at = $2::timestamptz + interval '30 seconds' WHERE job_id = $1", [
          ctx.job.job_id,
          new Date(clock.now()),
        ]);
        spare = await ctx.checkLease().catch((err: unknown) => err); // with time to spare, the same check lets the call go
      },
    });
    await testWorker(db.pool, stages, { clock }).runOnce();
    expect(checked).toBeInstanceOf(LeaseLostError);
    expect(spare).toBeUndefined();
  });
});
