/**
 * Queue: stage transitions per second with no-op external calls (SPEC §9), the figure to set
 * beside the best Postgres job queues on the same database.
 *
 * N jobs are created as the API creates them (`createJob`), then one in-process `BaseWorker`
 * with 1, 4 and 16 slots runs no-op stages until every job is `complete` (or a time cap).
 * Each job costs one claim statement and nine fenced transitions, each with its `job_events`
 * row; the figure counts transitions (and jobs) per second of wall time, and the ratio to the
 * one-slot figure. CPU of this process (the worker) and of the Postgres server are sampled over
 * the same window, which names what saturated first.
 */
import { randomUUID } from "node:crypto";
import { documentId, jobId, sha256 } from "../src/ids.ts";
import { createLogger } from "../src/logger.ts";
import { createJob } from "../src/state-machine/transition.ts";
import { BaseWorker } from "../src/worker/BaseWorker.ts";
import { noopStages, TRANSITIONS_PER_JOB, type NoopCounters } from "./noopStages.ts";
import {
  cpuWindow,
  createDatabase,
  describeCpu,
  figure,
  inParallel,
  round,
  sleep,
  type BenchContext,
  type BenchDatabase,
  type BenchResult,
  type CpuWindow,
} from "./support.ts";

interface QueueRun {
  slots: number;
  jobs: number;
  completedJobs: number;
  transitions: number;
  seconds: number;
  transitionsPerSecond: number;
  jobsPerSecond: number;
  cpu: CpuWindow;
  cappedByTime: boolean;
}

export async function runQueueBench(ctx: BenchContext): Promise<BenchResult> {
  const started = Date.now();
  const jobs = ctx.quick ? 400 : 2000;
  const capMs = ctx.quick ? 6_000 : 20_000;
  const slotCounts = [1, 4, 16];
  // A warm-up run first, not reported: V8 compiles the worker's code and PostgreSQL loads its
  // catalogs, so the first measured run (1 slot) is not also the cold one.
  ctx.log("queue: warm-up, 4 slots");
  await runOnce(ctx, 4, ctx.quick ? 100 : 400, capMs);
  const runs: QueueRun[] = [];
  for (const slots of slotCounts) {
    ctx.log(`queue: ${jobs} jobs, 1 process × ${slots} slot(s)`);
    const run = await runOnce(ctx, slots, jobs, capMs);
    ctx.log(`queue: ${slots} slot(s): ${Math.round(run.transitionsPerSecond)} transitions/s, ${round(run.jobsPerSecond, 1)} jobs/s`);
    runs.push(run);
  }

  const base = runs[0]!.transitionsPerSecond;
  const figures = runs.flatMap((r) => [
    figure(`transitions_per_s_${r.slots}`, `transitions/s, 1 process × ${r.slots} slot(s)`, round(r.transitionsPerSecond, 0), "transitions/s"),
    figure(`jobs_per_s_${r.slots}`, `jobs/s, 1 process × ${r.slots} slot(s)`, round(r.jobsPerSecond, 1), "jobs/s"),
    ...(r.slots === 1 ? [] : [figure(`ratio_${r.slots}_to_1`, `${r.slots} slots ÷ 1 slot`, round(r.transitionsPerSecond / base, 2), "ratio")]),
  ]);
  return {
    name: "queue",
    title: "Queue: stage transitions per second (no-op stages)",
    figures,
    notes: [
      `${jobs} jobs × ${TRANSITIONS_PER_JOB} transitions each; per job one claim (FOR UPDATE SKIP LOCKED) and ${TRANSITIONS_PER_JOB} fenced UPDATE+INSERT statements, in one process.`,
      ...runs.map((r) => `${r.slots} slot(s): ${saturation(r)}`),
      "The embedded PostgreSQL runs with fsync=off and synchronous_commit=off (a test cluster): on a durable server every transition also waits for its WAL flush, so expect lower figures there (set DATABASE_URL to measure one).",
    ],
    details: { jobs, capMs, runs },
    durationMs: Date.now() - started,
  };
}

async function runOnce(ctx: BenchContext, slots: number, jobs: number, capMs: number): Promise<QueueRun> {
  const db = await createDatabase(ctx, `queue_${slots}`, slots + 4);
  try {
    const run = await runNoopPipeline(db, { slots, jobs, capMs });
    return {
      slots,
      jobs,
      completedJobs: run.completed,
      transitions: run.transitions,
      seconds: round(run.seconds, 3),
      transitionsPerSecond: run.transitions / run.seconds,
      jobsPerSecond: run.transitions / TRANSITIONS_PER_JOB / run.seconds,
      cpu: run.cpu,
      cappedByTime: run.completed < jobs,
    };
  } finally {
    await db.drop();
  }
}

export interface NoopPipelineRun extends NoopCounters {
  seconds: number;
  /** CPU of this process (the worker) and of Postgres over the same window. */
  cpu: CpuWindow;
}

/**
 * Seed `jobs` jobs, then run one in-process `BaseWorker` with `slots` slots and no-op stages (the
 * worker's default settings otherwise) until every job is complete or `capMs` has passed.
 */
export async function runNoopPipeline(db: BenchDatabase, args: { slots: number; jobs: number; capMs: number }): Promise<NoopPipelineRun> {
  await seedJobs(db.pool, args.jobs);
  const { counters, worker } = noopWorker(db, args.slots);
  // Open the pool's connections before the window so every backend is counted in its CPU.
  await Promise.all(Array.from({ length: args.slots + 1 }, () => db.pool.query("SELECT 1")));
  const cpu = await cpuWindow(db.pool);
  const t0 = performance.now();
  await worker.start();
  const deadline = t0 + args.capMs;
  while (counters.completed < args.jobs && performance.now() < deadline) await sleep(2);
  const seconds = (performance.now() - t0) / 1000;
  const window = cpu.stop();
  const { transitions, completed } = counters;
  await worker.stop();
  return { transitions, completed, seconds, cpu: window };
}

/** One in-process `BaseWorker` on `db` with `slots` slots and no-op stages (default settings otherwise), not started. */
export function noopWorker(db: BenchDatabase, slots: number): { counters: NoopCounters; worker: BaseWorker<undefined> } {
  const counters: NoopCounters = { transitions: 0, completed: 0 };
  const worker = new BaseWorker<undefined>({
    pool: db.pool,
    databaseUrl: db.url,
    stages: noopStages(counters),
    services: undefined,
    log: createLogger({ level: "silent" }),
    concurrency: slots,
    leaseSeconds: 60,
    retryBaseMs: 1_000,
    retryMaxMs: 300_000,
    pollIntervalMs: 2_000,
  });
  return { counters, worker };
}

/** Documents in one statement, then a job for each through `createJob` (the API's own path). */
export async function seedJobs(pool: import("pg").Pool, count: number): Promise<void> {
  const userId = randomUUID();
  const docs = Array.from({ length: count }, (_, i) => {
    const fileSha = sha256(`bench document ${userId} ${i}`);
    const docId = documentId(userId, fileSha);
    return { docId, fileSha, rawPath: `${userId}/raw/${docId}/doc-${i}.md` };
  });
  await pool.query(
    `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
     SELECT d, $1, 'doc.md', 'text/markdown', 1024, s, p FROM unnest($2::uuid[], $3::text[], $4::text[]) AS t(d, s, p)`,
    [userId, docs.map((d) => d.docId), docs.map((d) => d.fileSha), docs.map((d) => d.rawPath)],
  );
  await inParallel(count, 8, (i) => createJob(pool, { jobId: jobId(docs[i]!.docId), documentId: docs[i]!.docId, correlationId: randomUUID(), maxAttempts: 5 }));
  // Fresh statistics, as a long-running queue table would have.
  await pool.query("ANALYZE upload_pipeline.upload_jobs");
}

function saturation(r: QueueRun): string {
  const capped = r.cappedByTime ? ` (time cap reached after ${r.completedJobs} jobs)` : "";
  return `${describeCpu(r.cpu, { label: "worker process", cores: r.cpu.benchProcessCores })}${capped}.`;
}
