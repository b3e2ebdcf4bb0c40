/**
 * Concurrency of the queue on a real database: several workers' claims, heartbeats, moves and
 * releases, an unleased writer (the webhook handler) and clock jumps, interleaved in orders
 * `fc.scheduler` generates (and shrinks). Each operation is released by the scheduler and runs
 * to completion before the next is released, so the rows can be compared before and after it.
 * A worker keeps using the last lease it took, so once it has lost that lease every write it
 * makes is a stale one.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LeaseLostError, type PipelineError } from "../../src/errors.ts";
import { isTerminal, NEXT_STATE, type JobStatus } from "../../src/state-machine/table.ts";
import { transition } from "../../src/state-machine/transition.ts";
import { claimNextJob, heartbeat, releaseJob } from "../../src/worker/queries.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { seedJob } from "../support/fixtures.ts";
import { eventPathProblems } from "./harness.ts";
import { checkProperty, timeoutFor } from "./settings.ts";
import { ManualClock } from "../../src/resilience/clock.ts";

const FILE = "test/property/concurrency.test.ts";
const DEFAULT_RUNS = 60;
const LEASE_SECONDS = 30;

let db: TestDatabase;
const clock = new ManualClock(Date.parse("2030-01-01T00:00:00Z"));
beforeAll(async () => {
  db = await createTestDatabase();
}, 60_000);
afterAll(() => db?.drop());

type WorkerAction = "claim" | "beat" | "move" | "release" | "idle";

interface Lease {
  jobId: string;
  token: string;
  /** The state the worker believes the job is in. */
  status: JobStatus;
}

interface Row {
  status: JobStatus;
  lease_token: string | null;
  locked_by: string | null;
  lease_expires_at: Date | null;
  next_attempt_at: Date;
  attempts: number;
  progress: unknown;
  updated_at: Date;
  events: number;
}

async function row(jobId: string): Promise<Row> {
  const { rows } = await db.pool.query(
    `SELECT status, lease_token, locked_by, lease_expires_at, next_attempt_at, attempts, progress, updated_at,
            (SELECT count(*)::int FROM upload_pipeline.job_events e WHERE e.job_id = j.job_id) AS events
       FROM upload_pipeline.upload_jobs j WHERE job_id = $1`,
    [jobId],
  );
  return rows[0];
}

/** Who the history has seen take a lease and not give it up: job → holder and lease expiry (ms). */
type Ledger = Map<string, { worker: string; token: string; expiresMs: number }>;

async function attempt<T>(fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  try {
    return { ok: true, value: await fn() };
  } catch (error) {
    return { ok: false, error };
  }
}

/** A worker's next operation, with the invariants checked around it. */
async function workerOp(name: string, action: WorkerAction, state: { lease?: Lease | undefined }, jobIds: string[], ledger: Ledger): Promise<void> {
  const now = new Date(clock.now());
  const lease = state.lease;
  if (action === "claim" || !lease) {
    const before = new Map(await Promise.all(jobIds.map(async (id) => [id, await row(id)] as const)));
    const job = await claimNextJob(db.pool, { workerId: name, leaseSeconds: LEASE_SECONDS, now });
    if (!job) return;
    expect(jobIds, "claimed a job from outside this run").toContain(job.job_id);
    // Never two holders: nobody the history saw take this job still holds a live lease on it.
    const held = ledger.get(job.job_id);
    expect(
      held && held.expiresMs > now.getTime() ? `${held.worker} holds ${job.job_id} until ${new Date(held.expiresMs).toISOString()}` : null,
      `${name} claimed at ${now.toISOString()}`,
    ).toBeNull();
    const prior = before.get(job.job_id)!;
    expect(prior.lease_token === null || prior.lease_expires_at!.getTime() <= now.getTime()).toBe(true);
    ledger.set(job.job_id, { worker: name, token: job.lease_token, expiresMs: now.getTime() + LEASE_SECONDS * 1000 });
    state.lease = { jobId: job.job_id, token: job.lease_token, status: job.status };
    return;
  }

  const before = await row(lease.jobId);
  const current = before.lease_token === lease.token;
  let wrote: boolean;
  if (action === "beat") {
    wrote = await heartbeat(db.pool, { jobId: lease.jobId, leaseToken: lease.token, leaseSeconds: LEASE_SECONDS, now });
    if (wrote) ledger.set(lease.jobId, { worker: name, token: lease.token, expiresMs: now.getTime() + LEASE_SECONDS * 1000 });
  } else if (action === "release") {
    wrote = await releaseJob(db.pool, { jobId: lease.jobId, leaseToken: lease.token, now });
    if (wrote && ledger.get(lease.jobId)?.token === lease.token) ledger.delete(lease.jobId);
  } else if (action === "move") {
    const to = NEXT_STATE[lease.status];
    if (!to) return;
    const releaseLease = isTerminal(to);
    const r = await attempt(() =>
      transition(db.pool, {
        jobId: lease.jobId,
        from: lease.status,
        to,
        actor: lease.status === "parse_queued" ? "reconciler" : "worker",
        fence: { kind: "lease", token: lease.token, workerId: name },
        setAttempts: releaseLease ? 0 : 1,
        releaseLease,
        now,
      }),
    );
    wrote = r.ok;
    if (!r.ok) expect(r.error).toBeInstanceOf(LeaseLostError);
    if (r.ok) {
      lease.status = to;
      if (releaseLease && ledger.get(lease.jobId)?.token === lease.token) ledger.delete(lease.jobId);
    }
    // The rightful holder, naming the state the job is in, is never refused.
    if (current && before.status === lease.status) expect(r.ok, `${name}'s current lease was refused moving ${lease.jobId}`).toBe(true);
  } else {
    return; // idle: a pause (GC, partition) while the clock may move on
  }
  if (!current) {
    // A stale lease token's write changes nothing.
    expect(wrote, `${name}'s stale ${action} on ${lease.jobId} succeeded`).toBe(false);
    expect(await row(lease.jobId)).toEqual(before);
  } else if (action !== "move") {
    expect(wrote, `${name}'s current ${action} was refused`).toBe(true);
  }
  // Refused (the lease is gone, or the job moved under it), released, or done: the worker lets go.
  if (!wrote || action === "release" || isTerminal(lease.status)) state.lease = undefined;
}

/** The webhook handler: an unleased move of a parse_queued job, allowed only when no live lease exists. */
async function webhookOp(jobId: string, ledger: Ledger): Promise<void> {
  const now = new Date(clock.now());
  const before = await row(jobId);
  if (before.status !== "parse_queued") return;
  const r = await attempt(() =>
    transition(db.pool, { jobId, from: "parse_queued", to: "parsed", actor: "webhook", fence: { kind: "unleased" }, setAttempts: 0, now }),
  );
  const held = ledger.get(jobId);
  const live = held !== undefined && held.expiresMs > now.getTime();
  if (live) {
    expect(r.ok, `webhook moved ${jobId} under ${held.worker}'s live lease`).toBe(false);
    expect(await row(jobId)).toEqual(before);
  } else {
    expect(r.ok).toBe(true);
  }
  if (!r.ok) expect((r.error as PipelineError).code).toBe("transition_conflict");
}

const workerPlan = fc.array(fc.constantFrom<WorkerAction>("claim", "beat", "move", "move", "move", "release", "idle"), { minLength: 2, maxLength: 10 });

describe("the queue under generated interleavings", () => {
  // In any interleaving of claims, heartbeats, moves, releases, webhook writes and clock jumps: never two holders of one job, a stale lease token's write changes nothing, and no job is stranded.
  it(
    "no two holders, stale writes change nothing, nothing stranded",
    async () => {
      await checkProperty(
        fc.asyncProperty(
          fc.scheduler(),
          fc.integer({ min: 1, max: 3 }),
          fc.array(workerPlan, { minLength: 2, maxLength: 3 }),
          fc.array(fc.constantFrom(5_000, 20_000, 31_000), { maxLength: 4 }),
          fc.array(fc.nat({ max: 2 }), { maxLength: 3 }),
          async (s, jobCount, plans, jumps, webhooks) => {
            await clock.advance(3_600_000);
            const jobs = [];
            for (let i = 0; i < jobCount; i++) jobs.push(await seedJob(db.pool));
            const jobIds = jobs.map((j) => j.jobId);
            const ledger: Ledger = new Map();
            try {
              const actors: Array<{ name: string; steps: Array<() => Promise<void>> }> = [
                ...plans.map((plan, w) => {
                  const state: { lease?: Lease } = {};
                  return { name: `w${w + 1}`, steps: plan.map((a) => () => workerOp(`w${w + 1}`, a, state, jobIds, ledger)) };
                }),
                { name: "clock", steps: jumps.map((ms) => async () => await clock.advance(ms)) },
                { name: "webhook", steps: webhooks.map((i) => () => webhookOp(jobIds[i % jobIds.length]!, ledger)) },
              ].filter((a) => a.steps.length > 0);
              await interleave(s, actors);
              await noneStranded(jobIds);
              for (const id of jobIds) expect(await eventPathProblems(db.pool, id)).toEqual([]);
            } finally {
              await db.pool.query("DELETE FROM upload_pipeline.documents WHERE user_id = ANY($1::uuid[])", [jobs.map((j) => j.userId)]);
            }
          },
        ),
        { name: "no two holders, stale writes change nothing, nothing stranded", file: FILE, defaultRuns: DEFAULT_RUNS },
      );
    },
    timeoutFor(DEFAULT_RUNS, 500),
  );
});

/**
 * Run the actors' steps one at a time, in the order the scheduler picks: every live actor waits
 * at a scheduled gate, the scheduler releases one, and that step runs to completion (real
 * database round trips) before the next gate is released.
 */
async function interleave(s: fc.Scheduler, actors: Array<{ name: string; steps: Array<() => Promise<void>> }>): Promise<void> {
  let alive = actors.length;
  const failures: unknown[] = [];
  const runs = actors.map(async (a) => {
    try {
      for (const [i, stepFn] of a.steps.entries()) {
        await s.schedule(Promise.resolve(), `${a.name}#${i + 1}`);
        if (failures.length > 0) return; // another step failed: wind down
        await stepFn();
      }
    } catch (err) {
      failures.push(err);
    } finally {
      alive -= 1;
    }
  });
  while (alive > 0) {
    // Wait until every live actor is parked at its gate (or done), then release exactly one.
    while (s.count() < alive) await new Promise((r) => setImmediate(r));
    if (alive === 0) break; // the last step finished while we waited
    await s.waitNext(1);
  }
  await Promise.all(runs);
  if (failures.length > 0) throw failures[0];
}

/** Once every lease has lapsed, a fresh worker can claim each unfinished job and take it to complete. */
async function noneStranded(jobIds: string[]): Promise<void> {
  await clock.advance((LEASE_SECONDS + 1) * 1000);
  for (let i = 0; i < jobIds.length * 12; i++) {
    const job = await claimNextJob(db.pool, { workerId: "sweeper", leaseSeconds: LEASE_SECONDS, now: new Date(clock.now()) });
    if (!job) break;
    let status: JobStatus = job.status;
    while (!isTerminal(status)) {
      const to = NEXT_STATE[status]!;
      await transition(db.pool, {
        jobId: job.job_id,
        from: status,
        to,
        actor: status === "parse_queued" ? "reconciler" : "worker",
        fence: { kind: "lease", token: job.lease_token, workerId: "sweeper" },
        releaseLease: isTerminal(to),
        now: new Date(clock.now()),
      });
      status = to;
    }
  }
  const { rows } = await db.pool.query("SELECT job_id, status FROM upload_pipeline.upload_jobs WHERE job_id = ANY($1)", [jobIds]);
  expect(rows.filter((r) => r.status !== "complete").map((r) => `${r.job_id}=${r.status}`)).toEqual([]);
}
