/**
 * `--only peers`: our queue beside graphile-worker and pg-boss (devDependencies), on the same
 * PostgreSQL in the same run (SPEC §9: stage transitions/s ≥ 1.2× graphile-worker's no-op jobs/s
 * and ≥ 2× pg-boss's; the 9-stage pipeline on graphile-worker at its best setting, ≥ 2×).
 *
 * - ours: `BaseWorker` with no-op stages, default concurrency (4 slots): a claim and nine fenced
 *   transitions per job, each with its `job_events` row; the figure is transitions/s.
 * - plain: N no-op jobs of one task; the figure is jobs/s.
 * - pipeline: the job this product exists for built on the peer: nine tasks, each a no-op that
 *   adds the next one; the figure is stage transitions (jobs completed) per second.
 * - default: the library's defaults at the same concurrency (4); batched: graphile-worker with
 *   `localQueue.size` 500 and `completeJobBatchDelay` 0, pg-boss fetching 100 jobs per poll and fetching again at once while batches come back full.
 *
 * Each run gets a fresh database cloned from the migrated template; the peers install their own
 * schema in it first (not timed).
 */
import { Logger, makeWorkerUtils, run as runGraphile, type Task } from "graphile-worker";
import { PgBoss } from "pg-boss";
import { TRANSITIONS_PER_JOB } from "./noopStages.ts";
import { runNoopPipeline } from "./queue.ts";
import { createDatabase, figure, round, sleep, type BenchContext, type BenchResult } from "./support.ts";

const CONCURRENCY = 4;
const STAGES = TRANSITIONS_PER_JOB;

interface PeerRun {
  system: "ours" | "graphile-worker" | "pg-boss";
  shape: "plain" | "pipeline";
  settings: "default" | "batched";
  /** Jobs (plain) or stage transitions (pipeline, ours) completed. */
  units: number;
  seconds: number;
  perSecond: number;
}

async function timed(done: () => boolean, capMs: number): Promise<number> {
  const t0 = performance.now();
  while (!done() && performance.now() - t0 < capMs) await sleep(2);
  return (performance.now() - t0) / 1000;
}

async function ours(ctx: BenchContext, settings: PeerRun["settings"], jobs: number, capMs: number): Promise<PeerRun> {
  const db = await createDatabase(ctx, "peers_ours", CONCURRENCY + 4);
  try {
    const { transitions, seconds } = await runNoopPipeline(db, { slots: CONCURRENCY, jobs, capMs });
    return { system: "ours", shape: "pipeline", settings, units: transitions, seconds, perSecond: transitions / seconds };
  } finally {
    await db.drop();
  }
}

const silentGraphile = new Logger(() => () => {});

async function graphile(ctx: BenchContext, shape: PeerRun["shape"], settings: PeerRun["settings"], jobs: number, capMs: number): Promise<PeerRun> {
  const db = await createDatabase(ctx, "peers_graphile", 2);
  try {
    const utils = await makeWorkerUtils({ connectionString: db.url, logger: silentGraphile });
    await utils.migrate();
    let done = 0;
    const taskList: Record<string, Task> = {};
    if (shape === "plain") {
      taskList.noop = async () => {
        done += 1;
      };
      await utils.addJobs(Array.from({ length: jobs }, () => ({ identifier: "noop", payload: {} })));
    } else {
      for (let stage = 1; stage <= STAGES; stage++) {
        taskList[`stage${stage}`] = async (payload, helpers) => {
          if (stage < STAGES) await helpers.addJob(`stage${stage + 1}`, payload as object);
          done += 1;
        };
      }
      await utils.addJobs(Array.from({ length: jobs }, (_, i) => ({ identifier: "stage1", payload: { doc: i } })));
    }
    await utils.release();
    const total = shape === "plain" ? jobs : jobs * STAGES;
    const t0 = performance.now();
    const runner = await runGraphile({
      connectionString: db.url,
      concurrency: CONCURRENCY,
      noHandleSignals: true,
      logger: silentGraphile,
      taskList,
      ...(settings === "batched" ? { preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } } } : {}),
    });
    await timed(() => done >= total, capMs);
    const seconds = (performance.now() - t0) / 1000;
    await runner.stop();
    return { system: "graphile-worker", shape, settings, units: done, seconds, perSecond: done / seconds };
  } finally {
    await db.drop();
  }
}

async function pgBoss(ctx: BenchContext, shape: PeerRun["shape"], settings: PeerRun["settings"], jobs: number, capMs: number): Promise<PeerRun> {
  const db = await createDatabase(ctx, "peers_pgboss", 2);
  const boss = new PgBoss({ connectionString: db.url, max: CONCURRENCY + 4 });
  boss.on("error", () => {});
  try {
    await boss.start();
    const names = shape === "plain" ? ["noop"] : Array.from({ length: STAGES }, (_, i) => `stage${i + 1}`);
    for (const name of names) await boss.createQueue(name);
    await boss.insert(
      names[0]!,
      Array.from({ length: jobs }, (_, i) => ({ data: { doc: i } })),
    );
    const total = shape === "plain" ? jobs : jobs * STAGES;
    let done = 0;
    const options = settings === "batched" ? { batchSize: 100, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 } : {};
    const t0 = performance.now();
    for (const [i, name] of names.entries()) {
      // `localConcurrency` workers per queue, like the slots of the other two.
      await boss.work(name, { ...options, localConcurrency: CONCURRENCY }, async (batch) => {
        const next = names[i + 1];
        if (next)
          await boss.insert(
            next,
            batch.map((job) => ({ data: job.data as object })),
          );
        done += batch.length;
      });
    }
    await timed(() => done >= total, capMs);
    const seconds = (performance.now() - t0) / 1000;
    return { system: "pg-boss", shape, settings, units: done, seconds, perSecond: done / seconds };
  } finally {
    await boss.stop({ graceful: false }).catch(() => {});
    await db.drop();
  }
}

export async function runPeersBench(ctx: BenchContext): Promise<BenchResult> {
  const started = Date.now();
  const jobs = ctx.quick ? 200 : 1000;
  const pipelineJobs = ctx.quick ? 60 : 300;
  const capMs = ctx.quick ? 15_000 : 60_000;
  const runs: PeerRun[] = [];
  const record = async (label: string, fn: () => Promise<PeerRun>) => {
    ctx.log(`peers: ${label}`);
    const r = await fn();
    ctx.log(`peers: ${label}: ${Math.round(r.perSecond)}/s (${r.units} in ${r.seconds.toFixed(1)} s)`);
    runs.push(r);
  };
  // Ours runs at the start of each block, and each ratio divides by the run beside it: on a shared
  // machine the load changes over the minutes a whole run takes.
  for (const settings of ["default", "batched"] as const) {
    await record(`ours, ${jobs} jobs × ${STAGES} transitions (beside the ${settings} runs)`, () => ours(ctx, settings, jobs, capMs));
    await record(`graphile-worker plain, ${settings}`, () => graphile(ctx, "plain", settings, jobs * STAGES, capMs));
    await record(`graphile-worker pipeline, ${settings}`, () => graphile(ctx, "pipeline", settings, pipelineJobs, capMs));
    await record(`pg-boss plain, ${settings}`, () => pgBoss(ctx, "plain", settings, jobs * STAGES, capMs));
    await record(`pg-boss pipeline, ${settings}`, () => pgBoss(ctx, "pipeline", settings, pipelineJobs, capMs));
  }
  const rate = (system: PeerRun["system"], shape: PeerRun["shape"], settings: PeerRun["settings"]) =>
    runs.find((r) => r.system === system && r.shape === shape && r.settings === settings)!.perSecond;
  const own = (settings: PeerRun["settings"]) => rate("ours", "pipeline", settings);
  const unit = (r: PeerRun) => (r.system === "ours" ? "transitions/s" : r.shape === "plain" ? "jobs/s" : "transitions/s");
  return {
    name: "peers",
    title: "Queue vs graphile-worker and pg-boss (same PostgreSQL, same run)",
    figures: [
      ...runs.map((r) =>
        figure(
          `${r.system}_${r.shape}_${r.settings}`.replaceAll("-", "_"),
          r.system === "ours" ? `ours, 9-stage pipeline, default (beside the ${r.settings} runs)` : `${r.system}, ${r.shape}, ${r.settings}`,
          round(r.perSecond, 0),
          unit(r),
        ),
      ),
      figure(
        "ratio_graphile_plain",
        "ours ÷ graphile-worker no-op jobs/s (default)",
        round(own("default") / rate("graphile-worker", "plain", "default"), 2),
        "ratio",
        {
          op: ">=",
          bound: 1.2,
        },
      ),
      figure("ratio_pgboss_plain", "ours ÷ pg-boss no-op jobs/s (default)", round(own("default") / rate("pg-boss", "plain", "default"), 2), "ratio", {
        op: ">=",
        bound: 2,
      }),
      figure(
        "ratio_graphile_pipeline",
        "ours ÷ graphile-worker pipeline (batched)",
        round(own("batched") / rate("graphile-worker", "pipeline", "batched"), 2),
        "ratio",
        {
          op: ">=",
          bound: 2,
        },
      ),
      figure(
        "ratio_graphile_plain_batched",
        "ours ÷ graphile-worker no-op jobs/s (batched)",
        round(own("batched") / rate("graphile-worker", "plain", "batched"), 2),
        "ratio",
      ),
      figure("ratio_pgboss_pipeline", "ours ÷ pg-boss pipeline (batched)", round(own("batched") / rate("pg-boss", "pipeline", "batched"), 2), "ratio"),
    ],
    notes: [
      `Concurrency ${CONCURRENCY} everywhere (our default WORKER_CONCURRENCY), one process, one PostgreSQL. Plain: ${jobs * STAGES} no-op jobs; pipeline: ${pipelineJobs} documents × ${STAGES} stages, each stage a job that adds the next; ours: ${jobs} jobs × ${STAGES} fenced transitions, run at the start of the default block and of the batched block; each ratio divides by the run of its own block.`,
      "graphile-worker batched: preset.worker.localQueue.size 500, completeJobBatchDelay 0, failJobBatchDelay 0. pg-boss batched: batchSize 100, burstWhenBatchFull, pollingIntervalSeconds 0.5; default: batchSize 1, pollingIntervalSeconds 2.",
      "Our figure keeps one fenced statement (with its job_events row) per transition; the peers write no audit row and hold no lease token.",
    ],
    details: { concurrency: CONCURRENCY, jobs, pipelineJobs, runs },
    durationMs: Date.now() - started,
  };
}
