/**
 * `--only peers`: our queue beside graphile-worker and pg-boss (devDependencies), on the same
 * PostgreSQL in the same run (SPEC §9: stage transitions/s ≥ 1.2× graphile-worker's no-op jobs/s
 * and ≥ 2× pg-boss's; the 9-stage pipeline on graphile-worker at its best setting, ≥ 2×).
 *
 * - ours: `BaseWorker` with no-op stages, default concurrency (4 slots): a claim and nine fenced
 *   transitions per job, each with its `job_events` row; the figure is transitions/s.
 * - plain: no-op jobs of one task; the figure is jobs/s.
 * - pipeline: the job this product exists for built on the peer: nine tasks, each a no-op that
 *   adds the next one; the figure is stage transitions (jobs completed) per second.
 * - default: the library's defaults at the same concurrency (4); batched: graphile-worker with
 *   `localQueue.size` 500 and `completeJobBatchDelay` 0, pg-boss fetching 100 jobs per poll and
 *   fetching again at once while batches come back full.
 *
 * How it is measured, so that a ratio says something on a shared machine (the load here swings
 * 2× within minutes, and one run used to last 0.3–2.6 s):
 * - every run is a fresh database cloned from the migrated template, loaded with more work than
 *   the run can finish (sized from a calibration pass), then started; the first `warmupMs` are
 *   not counted (connections, prepared statements, the peers' own start-up, PostgreSQL's caches
 *   of the new database) and the rate is what completes in the next `windowMs`;
 * - a calibration pass runs every contender once first (not reported): V8 compiles everyone's
 *   code before anything is measured, and it tells how much work to queue;
 * - rounds interleave ours with each peer (ours, peer, ours, peer, …, ours): each peer run's ratio
 *   divides the mean of the two runs of ours beside it by the peer's rate, and each ratio is
 *   reported as the median over rounds with its min–max, with the load average at start and end.
 *   The peers the targets name run in every round; the others once each, spread over the rounds.
 *
 * Nothing is favoured: every contender gets the same warm-up, window, concurrency and database.
 */
import { loadavg } from "node:os";
import { Logger, makeWorkerUtils, run as runGraphile, type Task } from "graphile-worker";
import { PgBoss } from "pg-boss";
import { TRANSITIONS_PER_JOB } from "./noopStages.ts";
import { noopWorker, seedJobs } from "./queue.ts";
import { createDatabase, figure, round, sleep, type BenchContext, type BenchDatabase, type BenchResult, type Figure } from "./support.ts";

const CONCURRENCY = 4;
const STAGES = TRANSITIONS_PER_JOB;
/** Completions a counted window holds at least (it lasts up to 4× `windowMs` to get them). */
const MIN_UNITS = 10;

type System = "ours" | "graphile-worker" | "pg-boss";
type Shape = "plain" | "pipeline";
type Settings = "default" | "batched";

interface Contender {
  key: string;
  system: System;
  shape: Shape;
  settings: Settings;
  /** Has a SPEC §9 target: measured in every round. */
  target?: { bound: number; label: string };
}

const OURS: Contender = { key: "ours_pipeline_default", system: "ours", shape: "pipeline", settings: "default" };

const PEERS: Contender[] = [
  {
    key: "graphile_worker_plain_default",
    system: "graphile-worker",
    shape: "plain",
    settings: "default",
    target: { bound: 1.2, label: "ours ÷ graphile-worker no-op jobs/s (default)" },
  },
  {
    key: "graphile_worker_pipeline_batched",
    system: "graphile-worker",
    shape: "pipeline",
    settings: "batched",
    target: { bound: 2, label: "ours ÷ graphile-worker pipeline (batched)" },
  },
  {
    key: "pg_boss_plain_default",
    system: "pg-boss",
    shape: "plain",
    settings: "default",
    target: { bound: 2, label: "ours ÷ pg-boss no-op jobs/s (default)" },
  },
  { key: "graphile_worker_plain_batched", system: "graphile-worker", shape: "plain", settings: "batched" },
  { key: "graphile_worker_pipeline_default", system: "graphile-worker", shape: "pipeline", settings: "default" },
  { key: "pg_boss_plain_batched", system: "pg-boss", shape: "plain", settings: "batched" },
  { key: "pg_boss_pipeline_default", system: "pg-boss", shape: "pipeline", settings: "default" },
  { key: "pg_boss_pipeline_batched", system: "pg-boss", shape: "pipeline", settings: "batched" },
];

/** Completed units (our transitions, the peers' jobs) per queued item (a job, or a document of the pipeline). */
const unitsPerItem = (c: Contender) => (c.shape === "pipeline" ? STAGES : 1);

/** A contender with its work queued on a fresh database, not yet started. */
interface Loaded {
  start(): Promise<void>;
  /** Units completed since start. */
  done(): number;
  stop(): Promise<void>;
}

interface Measured {
  key: string;
  round: number;
  /** Units per second over the window. */
  perSecond: number;
  units: number;
  seconds: number;
  /** The queued work ran out inside the window (the window was cut short; size the load up). */
  drained: boolean;
  loadAverage: number;
}

async function loadOurs(db: BenchDatabase, items: number): Promise<Loaded> {
  await seedJobs(db.pool, items);
  const { counters, worker } = noopWorker(db, CONCURRENCY);
  return { start: () => worker.start(), done: () => counters.transitions, stop: () => worker.stop() };
}

const silentGraphile = new Logger(() => () => {});

async function loadGraphile(db: BenchDatabase, c: Contender, items: number): Promise<Loaded> {
  const utils = await makeWorkerUtils({ connectionString: db.url, logger: silentGraphile });
  let done = 0;
  const taskList: Record<string, Task> = {};
  try {
    await utils.migrate();
    if (c.shape === "plain") {
      taskList.noop = async () => {
        done += 1;
      };
    } else {
      for (let stage = 1; stage <= STAGES; stage++) {
        taskList[`stage${stage}`] = async (payload, helpers) => {
          if (stage < STAGES) await helpers.addJob(`stage${stage + 1}`, payload as object);
          done += 1;
        };
      }
    }
    const identifier = c.shape === "plain" ? "noop" : "stage1";
    for (let from = 0; from < items; from += 10_000) {
      await utils.addJobs(Array.from({ length: Math.min(10_000, items - from) }, (_, i) => ({ identifier, payload: { doc: from + i } })));
    }
  } finally {
    await utils.release();
  }
  let runner: Awaited<ReturnType<typeof runGraphile>> | undefined;
  return {
    async start() {
      runner = await runGraphile({
        connectionString: db.url,
        concurrency: CONCURRENCY,
        noHandleSignals: true,
        logger: silentGraphile,
        taskList,
        ...(c.settings === "batched" ? { preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } } } : {}),
      });
    },
    done: () => done,
    stop: async () => runner?.stop(),
  };
}

async function loadPgBoss(db: BenchDatabase, c: Contender, items: number): Promise<Loaded> {
  const boss = new PgBoss({ connectionString: db.url, max: CONCURRENCY + 4 });
  boss.on("error", () => {});
  const names = c.shape === "plain" ? ["noop"] : Array.from({ length: STAGES }, (_, i) => `stage${i + 1}`);
  let done = 0;
  try {
    await boss.start();
    for (const name of names) await boss.createQueue(name);
    for (let from = 0; from < items; from += 10_000) {
      await boss.insert(
        names[0]!,
        Array.from({ length: Math.min(10_000, items - from) }, (_, i) => ({ data: { doc: from + i } })),
      );
    }
  } catch (err) {
    await boss.stop({ graceful: false }).catch(() => {});
    throw err;
  }
  const options = c.settings === "batched" ? { batchSize: 100, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 } : {};
  return {
    async start() {
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
    },
    done: () => done,
    stop: () => boss.stop({ graceful: false }).catch(() => {}),
  };
}

/** Wait until `ms` have passed since `from`, or the work ran out. */
async function waitWhile(working: () => boolean, from: number, ms: number): Promise<void> {
  while (working() && performance.now() - from < ms) await sleep(2);
}

interface Timing {
  warmupMs: number;
  windowMs: number;
}

/** One run: a fresh database, `items` queued, started, the warm-up discarded, then the window counted. */
async function measure(ctx: BenchContext, c: Contender, items: number, timing: Timing, roundNo: number): Promise<Measured> {
  const db = await createDatabase(ctx, `peers_${c.system.replace("-", "")}`, CONCURRENCY + 4);
  try {
    const loaded =
      c.system === "ours" ? await loadOurs(db, items) : c.system === "graphile-worker" ? await loadGraphile(db, c, items) : await loadPgBoss(db, c, items);
    const total = items * unitsPerItem(c);
    const loadAverage = loadavg()[0]!;
    const started = performance.now();
    await loaded.start();
    const working = () => loaded.done() < total;
    await waitWhile(working, started, timing.warmupMs);
    const n0 = loaded.done();
    const t0 = performance.now();
    await waitWhile(working, t0, timing.windowMs);
    // pg-boss's defaults complete about 2 jobs/s in bursts (each worker polls every 2 s): a window
    // holds at least MIN_UNITS completions, or lasts 4× as long, so such a rate is not read as 0.
    await waitWhile(() => working() && loaded.done() - n0 < MIN_UNITS, t0, timing.windowMs * 4);
    const n1 = loaded.done();
    const seconds = (performance.now() - t0) / 1000;
    await loaded.stop();
    return { key: c.key, round: roundNo, perSecond: (n1 - n0) / seconds, units: n1 - n0, seconds, drained: n1 >= total, loadAverage };
  } finally {
    await db.drop();
  }
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * Items to queue so a run at `perSecond` cannot finish them in its warm-up and window, within
 * bounds. 2× headroom: with 1.3× over the calibration rate, 13 of 41 runs ran out of work in one
 * run here (the load, and with it every rate, moves 2× within minutes).
 */
function itemsFor(c: Contender, perSecond: number, timing: Timing): number {
  const units = (perSecond * (timing.warmupMs + timing.windowMs) * 2) / 1000;
  const max = c.system === "ours" ? 10_000 : c.shape === "plain" ? 60_000 : 6_000;
  return Math.min(max, Math.max(50, Math.ceil(units / unitsPerItem(c))));
}

const describe = (c: Contender) =>
  c.system === "ours" ? "ours, 9-stage pipeline, default" : `${c.system}, ${c.shape === "plain" ? "no-op jobs" : "9-stage pipeline"}, ${c.settings}`;
const unitOf = (c: Contender) => (c.system !== "ours" && c.shape === "plain" ? "jobs/s" : "transitions/s");
const spread = (values: number[], digits: number) => {
  const [lo, hi] = [round(Math.min(...values), digits), round(Math.max(...values), digits)];
  return lo === hi ? `${lo}` : `${lo}–${hi}`;
};

export async function runPeersBench(ctx: BenchContext): Promise<BenchResult> {
  const startedAt = Date.now();
  const loadAtStart = loadavg();
  const rounds = ctx.quick ? 1 : 5;
  const timing: Timing = ctx.quick ? { warmupMs: 300, windowMs: 700 } : { warmupMs: 1_000, windowMs: 3_000 };
  const calibration: Timing = ctx.quick ? timing : { warmupMs: 500, windowMs: 1_000 };

  // Calibration: everyone once, with a generous fixed load; compiles every contender's code and
  // tells each run how much work to queue.
  /** The fastest rate seen so far per contender: what the next run's queued work is sized for. */
  const rateOf = new Map<string, number>();
  for (const c of [OURS, ...PEERS]) {
    const guess = c.system === "ours" ? 6_000 : c.shape === "plain" ? 10_000 : 1_000;
    const items = itemsFor(c, guess, calibration);
    ctx.log(`peers: calibration, ${describe(c)}, ${items} queued`);
    const m = await measure(ctx, c, items, calibration, 0);
    ctx.log(`peers: calibration, ${describe(c)}: ${Math.round(m.perSecond)} ${unitOf(c)}`);
    rateOf.set(c.key, Math.max(m.perSecond, 1));
  }

  const runs: Measured[] = [];
  const run = async (c: Contender, roundNo: number): Promise<Measured> => {
    const items = itemsFor(c, rateOf.get(c.key)!, timing);
    const m = await measure(ctx, c, items, timing, roundNo);
    ctx.log(
      `peers: round ${roundNo}, ${describe(c)}: ${Math.round(m.perSecond)} ${unitOf(c)} (${m.units} in ${m.seconds.toFixed(1)} s${m.drained ? ", ran out of work" : ""}; load ${m.loadAverage.toFixed(2)})`,
    );
    runs.push(m);
    // Size the next run from the fastest rate seen so far.
    rateOf.set(c.key, Math.max(rateOf.get(c.key)!, m.perSecond));
    return m;
  };

  // ours, P1, ours, P2, …, ours: each peer sits between two runs of ours.
  const targeted = PEERS.filter((p) => p.target);
  const others = PEERS.filter((p) => !p.target);
  const pairs: Array<{ peer: Contender; round: number; ratio: number }> = [];
  let previousOurs = await run(OURS, 1);
  for (let r = 1; r <= rounds; r++) {
    const shift = (r - 1) % targeted.length;
    const order = [...targeted.slice(shift), ...targeted.slice(0, shift), ...others.filter((_, i) => i % rounds === r - 1)];
    for (const peer of order) {
      const theirs = await run(peer, r);
      const nextOurs = await run(OURS, r);
      pairs.push({ peer, round: r, ratio: (previousOurs.perSecond + nextOurs.perSecond) / 2 / theirs.perSecond });
      previousOurs = nextOurs;
    }
  }
  const loadAtEnd = loadavg();

  const ratesOf = (c: Contender) => runs.filter((m) => m.key === c.key).map((m) => m.perSecond);
  const ratiosOf = (c: Contender) => pairs.filter((p) => p.peer === c).map((p) => p.ratio);
  const rateFigure = (c: Contender): Figure => {
    const rates = ratesOf(c);
    return figure(
      c.key,
      rates.length === 1 ? `${describe(c)}: one run` : `${describe(c)}: median of ${rates.length} runs (${spread(rates, 0)})`,
      round(median(rates), 0),
      unitOf(c),
    );
  };
  const ratioFigure = (c: Contender): Figure => {
    const ratios = ratiosOf(c);
    const label = c.target?.label ?? `ours ÷ ${describe(c)}`;
    const met = c.target ? `, ≥ ${c.target.bound}× in ${ratios.filter((x) => x >= c.target!.bound).length} of ${ratios.length}` : "";
    return figure(
      `ratio_${c.key.replace("graphile_worker", "graphile").replace("pg_boss", "pgboss")}`,
      ratios.length === 1 ? `${label}: one round${met}` : `${label}: median of ${ratios.length} rounds (${spread(ratios, 2)}${met})`,
      round(median(ratios), 2),
      "ratio",
      c.target ? { op: ">=", bound: c.target.bound } : undefined,
    );
  };
  const drained = runs.filter((m) => m.drained);
  const load = (l: number[]) => l.map((x) => x.toFixed(2)).join(" ");
  return {
    name: "peers",
    title: "Queue vs graphile-worker and pg-boss (same PostgreSQL, same run, interleaved rounds)",
    figures: [...targeted.map(ratioFigure), ...others.map(ratioFigure), rateFigure(OURS), ...PEERS.map(rateFigure)],
    notes: [
      `Concurrency ${CONCURRENCY} everywhere (our default WORKER_CONCURRENCY), one process, one PostgreSQL, a fresh database per run. Each run: ${timing.warmupMs} ms warm-up not counted, then ${timing.windowMs} ms counted (longer, up to 4×, until ${MIN_UNITS} completions); a calibration pass ran every contender once first (not reported).`,
      `${rounds} round(s) of ours, peer, ours, peer, …, ours; a ratio divides the mean of the two runs of ours beside a peer's run by that run. The targeted peers ran in every round, the others once.`,
      `Load average (1, 5, 15 min) at start ${load(loadAtStart)}, at end ${load(loadAtEnd)}; per run 1-min ${spread(
        runs.map((m) => m.loadAverage),
        2,
      )}.`,
      "graphile-worker batched: preset.worker.localQueue.size 500, completeJobBatchDelay 0, failJobBatchDelay 0. pg-boss batched: batchSize 100, burstWhenBatchFull, pollingIntervalSeconds 0.5; default: batchSize 1, pollingIntervalSeconds 2.",
      "Our figure keeps one fenced statement (with its job_events row) per transition; the peers write no audit row and hold no lease token.",
      ...(drained.length
        ? [
            `${drained.length} run(s) ran out of queued work inside the window (${[...new Set(drained.map((m) => m.key))].join(", ")}): their window was cut short.`,
          ]
        : []),
    ],
    details: {
      concurrency: CONCURRENCY,
      rounds,
      timing,
      fastestRates: Object.fromEntries(rateOf),
      loadAtStart,
      loadAtEnd,
      runs,
      pairs: pairs.map((p) => ({ peer: p.peer.key, round: p.round, ratio: p.ratio })),
    },
    durationMs: Date.now() - startedAt,
  };
}
