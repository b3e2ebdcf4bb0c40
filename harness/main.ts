/**
 * `npm run scenario [-- <name>...] [--suite NAME] [--workers N] [--seed N] [--report DIR] [--require-coverage P] [--list]`
 *
 * Runs a scenario suite (every file in scenarios/ by default, scenarios/<suite>/ with --suite) against real worker processes,
 * checks the invariants after each, reports state-machine coverage and multi-worker scaling, and
 * exits non-zero on any violation or on coverage below --require-coverage.
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { z } from "zod";
import { configForLocalMocks } from "../src/config.ts";
import { provisionDatabase } from "../src/db/provision.ts";
import { embedVersion } from "../src/services.ts";
import { collectCoverage, coveragePercent, meetsCoverage, mergeCoverage, type CoverageReport } from "./coverage.ts";
import { fingerprint, type Fingerprint } from "./invariants/index.ts";
import { SpanCollector } from "./traces.ts";
import { formatResultsTable, scalingCurve, throughputSeries, writeReport, type RunSummary, type ScenarioResult, type ScalingCurve } from "./report/index.ts";
import { checkRun, crashTargets, runScenario, type RunOutcome } from "./runner.ts";
import { buildCorpus, CorpusFilesError } from "./corpus.ts";
import { replayDifferences, type ReplayRecord } from "./replay.ts";
import { EnvFileError, loadEnvFile, withEnvFile } from "./envFile.ts";
import { StarterExistsError, writeStarter } from "./init.ts";
import { drawScenario, isViolation } from "./soak.ts";
import { formatJepsen, jepsenCounts, sumJepsen } from "./jepsen.ts";
import { REACHABLE, reachedEvents } from "./reachability.ts";
import { loadScenarioFile, loadSuite, parseScenario, ScenarioFileError, SuiteError, type Scenario } from "./scenario.ts";
import { createProgress } from "./progress.ts";

const USAGE = `usage: npm run scenario -- [name|file.json ...] [options]
       npm run scenario -- init [DIR]     write a starter my-scenario.json and scenario.env (with comments)
       npm run scenario -- soak [--minutes N] [--rounds N] [--seed N]
                                          random scenarios from a seed stream until a violation or the time is up
                                          (default 5 min; --rounds alone: exactly N rounds; no --seed: a random one)

  name ...                 scenarios to run (default: every file of the suite); a path to a .json file also works
  --suite NAME             the suite to run or pick names from: "default" (scenarios/*.json) or a folder
                           under scenarios/, e.g. "production" (scenarios/production/*.json)
  --list                   list the suite's scenarios with their one-line descriptions and exit
  --replay FILE            run again the failed scenarios of a report (its summary.json; all of them if none
                           failed) with the same definitions and seeds, and say whether the fault log and the
                           final database came out identical
  --env-file FILE          the worker and API settings you deploy (KEY=value lines), under every scenario's own
                           workerEnv; checked by the worker's config schema before anything starts
  --workers N              worker processes for every scenario (default: each scenario's own)
  --seed N                 seed every scenario with N: the same seed replays the same corpus, faults and kills
  --report DIR             where to write summary.json, report.md and report.html (default: reports/latest)
  --require-coverage P     fail unless the suite exercised at least P% of the state machine's edges
  --help                   this text`;

const Flags = z.object({
  suite: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]*$/, "a suite name such as production (a folder under scenarios/)")
    .default("default"),
  workers: z.coerce.number().int().min(1).max(16).optional(),
  seed: z.coerce.number().int().optional(),
  report: z.string().min(1).default("reports/latest"),
  "require-coverage": z.coerce.number().min(0).max(100).optional(),
  minutes: z.coerce
    .number()
    .positive()
    .max(24 * 60)
    .optional(),
  rounds: z.coerce.number().int().min(1).optional(),
});

function fail(message: string): never {
  process.stderr.write(`scenario: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      allowPositionals: true,
      options: {
        list: { type: "boolean" },
        suite: { type: "string" },
        replay: { type: "string" },
        "env-file": { type: "string" },
        minutes: { type: "string" },
        rounds: { type: "string" },
        help: { type: "boolean" },
        workers: { type: "string" },
        seed: { type: "string" },
        report: { type: "string" },
        "require-coverage": { type: "string" },
      },
    });
  } catch (err) {
    fail((err as Error).message);
  }
  if (args.values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const flags = Flags.safeParse(args.values);
  if (!flags.success) {
    fail(flags.error.issues.map((i) => `--${String(i.path[0])}: ${i.message}`).join("; "));
  }
  const { suite, workers, seed, report, "require-coverage": requiredCoverage } = flags.data;

  if (args.positionals[0] === "init") {
    const files = await writeStarter(resolve(args.positionals[1] ?? "."));
    process.stdout.write(`wrote ${files.join(" and ")}\nrun it: npm run scenario -- ${files[0]} --env-file ${files[1]}\n`);
    return 0;
  }
  if (args.positionals[0] === "soak") return soak(flags.data);
  const envFile = args.values["env-file"] ? await loadEnvFile(resolve(args.values["env-file"])) : undefined;
  const replaying = args.values.replay ? await loadReplay(resolve(args.values.replay)) : undefined;
  const builtIns = replaying ? [] : await loadSuite(suite);
  if (args.values.list) {
    for (const s of builtIns) process.stdout.write(`${s.name.padEnd(26)} ${s.description}\n`);
    return 0;
  }
  const selected: Scenario[] = [];
  for (const name of args.positionals) {
    if (name.endsWith(".json")) selected.push(await loadScenarioFile(resolve(name)));
    else {
      const found = builtIns.find((s) => s.name === name);
      if (!found) fail(`no scenario named "${name}" in the ${suite} suite; its scenarios: ${builtIns.map((s) => s.name).join(", ")}`);
      selected.push(found);
    }
  }
  const scenarios = (
    replaying?.map((r) => r.scenario) ?? (selected.length > 0 ? selected : orderSuite(builtIns)).map((s) => (seed === undefined ? s : { ...s, seed }))
  ).map((s) => withEnvFile(s, envFile));
  if (envFile) {
    process.stdout.write(`settings from ${args.values["env-file"]}: ${Object.keys(envFile.env).join(", ") || "none"}\n`);
    if (envFile.ignored.length > 0) process.stdout.write(`ignored (the runner wires them): ${envFile.ignored.join(", ")}\n`);
  }
  // Everything a scenario names is checked before anything starts (exit 2 on a mistake).
  for (const scenario of scenarios) crashTargets(scenario, buildCorpus(scenario));

  const reportDir = resolve(report);
  const progress = createProgress(process.stdout);
  const db = await provisionDatabase({ databaseUrl: process.env.DATABASE_URL });
  progress.line(`PostgreSQL: ${db.kind === "embedded" ? "embedded (temporary)" : "DATABASE_URL"}; ${scenarios.length} scenario(s); report → ${reportDir}`);
  // The waterfalls of report.html: the workers export their spans here (OTLP/HTTP on loopback).
  const spans = new SpanCollector();
  await spans.start();
  const env = {
    serverUrl: db.url,
    restartPostgres: db.restart,
    logDir: join(reportDir, "logs"),
    onProgress: progress.update,
    onEvent: progress.line,
    spans,
  };

  const startedAt = new Date();
  const results: ScenarioResult[] = [];
  const coverages: CoverageReport[] = [];
  let scaling: ScalingCurve | null = null;
  const references = new Map<string, Map<string, Fingerprint>>();
  try {
    for (const scenario of scenarios) {
      progress.start(scenario.name);
      try {
        if (scenario.scaling) {
          const result = await runScaling(scenario, env, progress.line);
          scaling = result.scaling ?? null;
          results.push(result);
        } else {
          // A run with no fault and no crash is its own reference.
          const reference = disturbed(scenario) ? await referenceFor(scenario, env, references) : undefined;
          const run = await runScenario(scenario, env, { workers });
          const result = await summarise(scenario, run, reference);
          await writeFaultLog(reportDir, scenario.name, run.faultLog);
          result.definition = workers === undefined ? scenario : { ...scenario, workers: { ...scenario.workers, processes: workers } };
          result.replayCommand = `npm run scenario -- --replay ${join(report, "summary.json")}`;
          const recorded = replaying?.find((r) => r.scenario.name === scenario.name)?.record;
          if (recorded && result.replay) {
            const differences = replayDifferences(recorded, result.replay);
            progress.line(
              differences.length === 0
                ? `replay of ${scenario.name}: identical fault log (${result.replay.faults} faults) and final database`
                : `replay of ${scenario.name}: ${differences.join("; ")}`,
            );
            if (differences.length > 0) result.errors.push(`replay: ${differences.join("; ")}`);
          }
          if (result.coverage) coverages.push(result.coverage);
          results.push(result);
          await run.dropDatabase();
        }
      } catch (err) {
        results.push(crashedResult(scenario, err as Error));
      }
      progress.finish(results.at(-1)!);
    }
  } finally {
    await spans.stop();
    await db.stop();
  }

  const coverage = coverages.length > 0 ? mergeCoverage(coverages) : null;
  const coverageOk = requiredCoverage === undefined || (coverage !== null && meetsCoverage(coverage, requiredCoverage));
  const finishedAt = new Date();
  const summary: RunSummary = {
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    durationMs: finishedAt.getTime() - startedAt.getTime(),
    seed: seed ?? "per scenario",
    passed: results.every((r) => r.passed) && coverageOk,
    requiredCoverage: requiredCoverage ?? null,
    coverage,
    scenarios: results,
    scaling,
    environment: { node: process.version, platform: process.platform, cpus: cpus().length },
  };
  const files = await writeReport(reportDir, summary);
  process.stdout.write(`\n${formatResultsTable(summary, { color: process.stdout.isTTY })}\n`);
  process.stdout.write("(total: wall time, with PostgreSQL's start and the crash-free reference runs of scenarios with faults)\n");
  if (coverage) {
    process.stdout.write(`state-machine coverage: ${coveragePercent(coverage).toFixed(1)}% of ${coverage.totalEdges} edges`);
    process.stdout.write(coverage.unexercised.length ? `; never exercised: ${coverage.unexercised.join(", ")}\n` : "\n");
  }
  if (!coverageOk) process.stdout.write(`FAIL: coverage below the required ${requiredCoverage}%\n`);
  const counted = results.flatMap((r) => (r.figures.jepsen ? [r.figures.jepsen] : []));
  if (counted.length > 0) process.stdout.write(`all scenarios: ${formatJepsen(sumJepsen(counted))}\n`);
  process.stdout.write(`report: ${Object.values(files).join(", ")}\n`);
  return summary.passed ? 0 : 1;
}

/**
 * `soak`: rounds drawn from a seed stream until the time (or the round cap) is up, or a round
 * violates an invariant or does not finish: then it stops and prints the round's seed and the
 * command that replays it exactly.
 */
async function soak(flags: z.output<typeof Flags>): Promise<number> {
  const seed = flags.seed ?? Math.floor(Math.random() * 2 ** 31);
  // --rounds alone runs exactly that many rounds (a reproducible gate: the same rounds on any machine); else 5 minutes.
  const minutes = flags.minutes ?? (flags.rounds === undefined ? 5 : undefined);
  const reportDir = resolve(flags.report === "reports/latest" ? "reports/soak" : flags.report);
  const progress = createProgress(process.stdout);
  const db = await provisionDatabase({ databaseUrl: process.env.DATABASE_URL });
  const env = { serverUrl: db.url, restartPostgres: db.restart, logDir: join(reportDir, "logs"), onProgress: progress.update, onEvent: progress.line };
  progress.line(
    `soak: seed ${seed}, ${[minutes === undefined ? "" : `${minutes} min`, flags.rounds === undefined ? "" : `at most ${flags.rounds} rounds`].filter(Boolean).join(", ")}; PostgreSQL restarts ${db.restart ? "in some rounds" : "off (DATABASE_URL)"}; report → ${reportDir}`,
  );
  const startedAt = new Date();
  const stopAt = minutes === undefined ? Number.POSITIVE_INFINITY : Date.now() + minutes * 60_000;
  const results: ScenarioResult[] = [];
  const totals = { kills: 0, restarts: 0, faults: 0 };
  let violation: ScenarioResult | undefined;
  try {
    for (let round = 0; Date.now() < stopAt && (flags.rounds === undefined || round < flags.rounds); round++) {
      const scenario = drawScenario(seed, round, { postgresRestarts: Boolean(db.restart) });
      progress.start(`${scenario.name} (seed ${scenario.seed})`);
      let result: ScenarioResult;
      let onTheClock: string[] = [];
      try {
        const run = await runScenario(scenario, env);
        result = await summarise(scenario, run, undefined);
        onTheClock = run.missedOnTheClock;
        await writeFaultLog(reportDir, scenario.name, run.faultLog);
        await run.dropDatabase();
        totals.kills += run.kills;
        totals.restarts += run.postgresRestarts;
        totals.faults += run.faultLog.length;
      } catch (err) {
        result = crashedResult(scenario, err as Error);
      }
      result.definition = scenario;
      result.replayCommand = `npm run scenario -- --replay ${join(reportDir, "summary.json")}`;
      progress.finish(result);
      results.push(result);
      if (isViolation(result, onTheClock)) {
        violation = result;
        break;
      }
    }
  } finally {
    await db.stop();
  }
  const finishedAt = new Date();
  const summary: RunSummary = {
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    durationMs: finishedAt.getTime() - startedAt.getTime(),
    seed,
    passed: violation === undefined,
    requiredCoverage: null,
    coverage: null,
    scenarios: results,
    scaling: null,
    environment: { node: process.version, platform: process.platform, cpus: cpus().length },
  };
  await writeReport(reportDir, summary);
  process.stdout.write(
    `\nsoak: ${results.length} round(s) in ${(summary.durationMs / 60_000).toFixed(1)} min, ${totals.kills} kills, ${totals.restarts} PostgreSQL restarts, ${totals.faults} injected faults\n`,
  );
  if (!violation) {
    process.stdout.write(`no violation (seed ${seed}); report: ${join(reportDir, "summary.json")}\n`);
    return 0;
  }
  const definition = violation.definition as Scenario;
  process.stdout.write(
    `VIOLATION in ${violation.name} (round seed ${definition.seed}):\n${[...violation.errors, ...(violation.invariants?.checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.violations.slice(0, 3).join("; ")}`) ?? [])].map((e) => `  ${e}`).join("\n")}\n` +
      `replay it exactly: ${violation.replayCommand}\n`,
  );
  return 1;
}

/** True when a scenario injects any fault, crash, freeze or restart (so it needs a clean reference run). */
function disturbed(s: Scenario): boolean {
  const faults = Object.values(s.faults).some((section) => section !== undefined && typeof section === "object");
  return faults || s.crashes.length > 0 || s.crashPoints.length > 0 || s.freezes.length > 0 || s.postgresRestartAtMs !== undefined || s.retryFailed;
}

/** The scenarios of a report to run again: its failed ones (all when none failed), with their recorded digests. */
async function loadReplay(file: string): Promise<Array<{ scenario: Scenario; record?: ReplayRecord | undefined }>> {
  let summary: RunSummary;
  try {
    summary = JSON.parse(await readFile(file, "utf8")) as RunSummary;
  } catch (err) {
    fail(`--replay: ${file} is not a readable summary.json (${(err as Error).message})`);
  }
  const runs = (summary.scenarios ?? []).filter((r) => r.definition !== undefined);
  if (runs.length === 0) fail(`--replay: ${file} records no scenario definitions (written by an older runner, or only a scaling run)`);
  const failed = runs.filter((r) => !r.passed);
  return (failed.length > 0 ? failed : runs).map((r) => ({ scenario: parseScenario(r.definition, `${file}: ${r.name}`), record: r.replay }));
}

/** The run's fault log, one line per injected fault (sorted: arrival order is not part of a replay). */
async function writeFaultLog(reportDir: string, name: string, lines: string[]): Promise<void> {
  await mkdir(join(reportDir, "faults"), { recursive: true });
  await writeFile(join(reportDir, "faults", `${name}.log`), lines.length > 0 ? `${lines.join("\n")}\n` : "");
}

/** The default suite: the happy path first, scaling last, the rest by name. */
function orderSuite(all: Scenario[]): Scenario[] {
  const rank = (s: Scenario) => (s.name === "happy-path" ? 0 : s.scaling ? 2 : 1);
  return [...all].sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
}

/**
 * Fingerprints of a crash-free reference run of the same corpus (no faults, no crashes), cached
 * per corpus, so "chunk ids, chunk_sha and vector_sha equal an uninterrupted run" is checked
 * against a real run rather than a second implementation of the pipeline.
 */
async function referenceFor(scenario: Scenario, env: Parameters<typeof runScenario>[1], cache: Map<string, Map<string, Fingerprint>>) {
  const key = JSON.stringify([
    scenario.seed,
    scenario.corpus,
    pick(scenario.workerEnv, ["CHUNK_MAX_TOKENS", "CHUNK_OVERLAP_TOKENS", "EMBED_MODEL", "EMBED_DIMENSIONS"]),
  ]);
  const cached = cache.get(key);
  if (cached) return cached;
  const reference: Scenario = {
    ...scenario,
    name: `${scenario.name}-reference`,
    faults: {},
    crashes: [],
    crashPoints: [],
    phases: {},
    postgresRestartAtMs: undefined,
    retryFailed: false,
    // Its fingerprints are the uploads' profile's: a model migration's target is checked against a recomputation.
    actions: [],
    workerEnv: pick(scenario.workerEnv, ["CHUNK_MAX_TOKENS", "CHUNK_OVERLAP_TOKENS", "EMBED_MODEL", "EMBED_DIMENSIONS", "EMBED_BATCH_SIZE"]),
    workers: { processes: 1, slots: 4 },
  };
  const run = await runScenario(reference, { ...env, onProgress: undefined, onEvent: undefined });
  try {
    if (run.timedOut) throw new Error(`the reference run did not finish: ${run.stuck.join("; ")}`);
    // The uploads' model only: a scenario that migrates models also has the target's vectors.
    const config = configForLocalMocks("http://unused", scenario.workerEnv);
    const prints = await fingerprint(run.pool, run.documentIds, { embed: { model: config.EMBED_MODEL, version: embedVersion(config) } });
    cache.set(key, prints);
    return prints;
  } finally {
    await run.dropDatabase();
  }
}

async function summarise(scenario: Scenario, run: RunOutcome, reference?: Map<string, Fingerprint>): Promise<ScenarioResult> {
  const invariants = await checkRun(run, scenario, reference);
  const coverage = await collectCoverage(run.pool);
  const throughput = await throughputSeries(run.pool);
  const { rows } = await run.pool.query<{ status: string; tokens: string; cost: string }>(
    `SELECT status, coalesce((progress->>'tokens')::bigint, 0) AS tokens, coalesce((progress->>'cost_usd')::numeric, 0) AS cost
       FROM upload_pipeline.upload_jobs`,
  );
  const reached = await reachedEvents({ ...run, documentIds: run.documentIds });
  const never = scenario.sometimes.filter((e) => !reached.includes(e)).map((e) => `sometimes: ${e} never happened (${REACHABLE[e]})`);
  const completeIds = run.documentIds.filter((id) => run.expected.get(id) === "complete");
  const jepsen = await jepsenCounts(run.pool, { ...run, completeIds }, reference);
  const errors = [...(run.timedOut ? [`not quiet within ${scenario.deadlineMs} ms`, ...run.stuck] : []), ...run.missed, ...never, ...run.boundsBroken];
  return {
    name: scenario.name,
    seed: scenario.seed,
    description: scenario.description,
    passed: invariants.ok && errors.length === 0,
    errors,
    figures: {
      documents: run.documentIds.length,
      workers: scenario.workers.processes,
      slots: scenario.workers.slots,
      durationMs: run.durationMs,
      throughputDocsPerSec: run.throughput,
      completed: rows.filter((r) => r.status === "complete").length,
      failed: rows.filter((r) => r.status.startsWith("failed_")).length,
      rateLimited429: run.mockStats.rateLimited.total,
      kills: run.kills,
      faults: faultCounts(run),
      tokens: rows.reduce((a, r) => a + Number(r.tokens), 0),
      costUsd: rows.reduce((a, r) => a + Number(r.cost), 0),
      reached,
      jepsen,
    },
    invariants,
    coverage,
    throughput,
    timeline: run.timeline,
    traces: run.traces,
    replay: run.replay,
  };
}

async function runScaling(scenario: Scenario, env: Parameters<typeof runScenario>[1], line: (s: string) => void): Promise<ScenarioResult> {
  const measurements: Array<{ workers: number; docsPerSecond: number }> = [];
  const errors: string[] = [];
  let last: ScenarioResult | undefined;
  for (const n of scenario.scaling!.workerCounts) {
    const run = await runScenario({ ...scenario, workers: { processes: n, slots: scenario.workers.slots } }, env, { workers: n });
    const result = await summarise(scenario, run, undefined);
    await run.dropDatabase();
    if (!result.passed) errors.push(`with ${n} workers: ${result.errors.join("; ") || "an invariant failed"}`);
    measurements.push({ workers: n, docsPerSecond: run.throughput });
    line(`  ${n} worker(s): ${run.throughput.toFixed(2)} docs/s`);
    last = result;
  }
  const curve = scalingCurve(measurements);
  return { ...last!, passed: errors.length === 0, errors, scaling: curve };
}

/** Injected faults by kind (summed over routes), webhook deliveries other than the genuine ones, restarts and retries. */
function faultCounts(run: RunOutcome): Record<string, number> {
  const out: Record<string, number> = {};
  const add = (k: string, n: number) => n > 0 && (out[k] = (out[k] ?? 0) + n);
  for (const byKind of Object.values(run.mockStats.faults)) for (const [kind, n] of Object.entries(byKind)) add(String(kind), n);
  for (const [kind, outcomes] of Object.entries(run.mockStats.webhooks.deliveries)) {
    if (kind !== "genuine")
      add(
        `webhook_${kind}`,
        Object.values(outcomes).reduce((a, b) => a + (b ?? 0), 0),
      );
  }
  add("postgres_restarts", run.postgresRestarts);
  add("operator_retries", run.retried);
  return out;
}

function crashedResult(scenario: Scenario, err: Error): ScenarioResult {
  return {
    name: scenario.name,
    description: scenario.description,
    passed: false,
    errors: [`the run itself failed: ${err.message}`],
    figures: { documents: 0, workers: scenario.workers.processes, durationMs: 0, throughputDocsPerSec: 0, rateLimited429: 0, kills: 0 },
    invariants: null,
    coverage: null,
    throughput: null,
  };
}

function pick(record: Record<string, string>, keys: string[]): Record<string, string> {
  return Object.fromEntries(Object.entries(record).filter(([k]) => keys.includes(k)));
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    if (
      err instanceof ScenarioFileError ||
      err instanceof SuiteError ||
      err instanceof CorpusFilesError ||
      err instanceof EnvFileError ||
      err instanceof StarterExistsError
    )
      process.stderr.write(`scenario: ${err.message}\n`);
    else process.stderr.write(`scenario: ${err.stack ?? err.message}\n`);
    process.exit(2);
  },
);
