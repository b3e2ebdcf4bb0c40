import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type pg from "pg";
import { transition, type Fence } from "../../src/state-machine/transition.ts";
import { claimNextJob } from "../../src/worker/queries.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { jobRow, seedJob } from "../support/fixtures.ts";
import { until } from "../support/until.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

/** Updates of upload_jobs counted by the statistics collector: all of them, and the HOT ones. */
async function updateCounts(): Promise<{ updates: number; hot: number }> {
  const { rows } = await db.pool.query<{ updates: string; hot: string }>(
    "SELECT n_tup_upd AS updates, n_tup_hot_upd AS hot FROM pg_stat_user_tables WHERE relid = 'upload_pipeline.upload_jobs'::regclass",
  );
  return { updates: Number(rows[0]!.updates), hot: Number(rows[0]!.hot) };
}

/** Counts after `session`'s pending statistics have reached the shared counters. */
async function countsAfter(session: pg.PoolClient, before: { updates: number; hot: number }, updates: number) {
  await session.query("SELECT pg_stat_force_next_flush()");
  let after = before;
  await until(`${updates} updates counted`, async () => {
    after = await updateCounts();
    return after.updates - before.updates >= updates;
  });
  return { updates: after.updates - before.updates, hot: after.hot - before.hot };
}

describe("HOT updates (migration 0012)", () => {
  it("a claim and the transitions that keep the lease add no index entry; the move into a terminal state does", async () => {
    const job = await seedJob(db.pool);
    const session = await db.pool.connect();
    try {
      const before = await updateCounts();
      const claimed = await claimNextJob(session, { workerId: "w1", leaseSeconds: 60 });
      expect(claimed?.job_id).toBe(job.jobId);
      const fence: Fence = { kind: "lease", token: claimed!.lease_token, workerId: "w1" };
      await transition(session, { jobId: job.jobId, from: "uploaded", to: "parse_queued", actor: "worker", fence, parseJobId: "pj-1" });
      await transition(session, { jobId: job.jobId, from: "parse_queued", to: "parsed", actor: "reconciler", fence });
      await transition(session, { jobId: job.jobId, from: "parsed", to: "parse_validated", actor: "worker", fence });
      // Leaving the claim index (unfinished → false) has to touch the indexes.
      await transition(session, { jobId: job.jobId, from: "parse_validated", to: "failed_chunking", actor: "worker", fence, releaseLease: true });
      // 5 updates, 3 HOT: the claim and two moves between pipeline states. Not HOT: the move that
      // sets parse_job_id (its index holds the jobs that have one) and the failure.
      expect(await countsAfter(session, before, 5)).toEqual({ updates: 5, hot: 3 });
    } finally {
      session.release();
    }
  });

  it("a move that keeps the lease leaves a due job's next_attempt_at alone, and still makes a job waiting for later due now", async () => {
    const job = await seedJob(db.pool);
    const claimed = await claimNextJob(db.pool, { workerId: "w1", leaseSeconds: 60 });
    expect(claimed?.job_id).toBe(job.jobId);
    const fence: Fence = { kind: "lease", token: claimed!.lease_token, workerId: "w1" };
    const dueAt = (await jobRow(db.pool, job.jobId)).next_attempt_at as Date;
    // Waiting for the webhook with the lease kept (an early delivery): due at the deadline.
    await transition(db.pool, { jobId: job.jobId, from: "uploaded", to: "parse_queued", actor: "worker", fence, dueInMs: 3_600_000 });
    const waiting = (await jobRow(db.pool, job.jobId)).next_attempt_at as Date;
    expect(waiting.getTime()).toBeGreaterThan(Date.now() + 3_500_000);
    // The result is fetched at once: the job is due again (a crash now must not leave it waiting an hour).
    await transition(db.pool, { jobId: job.jobId, from: "parse_queued", to: "parsed", actor: "reconciler", fence });
    const fetched = (await jobRow(db.pool, job.jobId)).next_attempt_at as Date;
    expect(fetched.getTime()).toBeLessThanOrEqual(Date.now());
    expect(fetched.getTime()).toBeGreaterThan(dueAt.getTime());
    // Due already: the next move keeps the value (the job stays due), so no index key changes.
    await transition(db.pool, { jobId: job.jobId, from: "parsed", to: "parse_validated", actor: "worker", fence });
    expect(((await jobRow(db.pool, job.jobId)).next_attempt_at as Date).getTime()).toBe(fetched.getTime());
  });
});
