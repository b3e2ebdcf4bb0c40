/**
 * Run counts, seeds and replay for every property in `test/property/`.
 *
 *   npx vitest run test/property                          default counts (fast enough for `npm test`)
 *   PROP_RUNS=2000 npx vitest run test/property           deep run: every property runs 2000 times
 *   PROP_SEED=… PROP_PATH=… [PROP_REPLAY_PATH=…] npx vitest run test/property/<file> -t '<property>'
 *                                                         replay one counterexample (the failure prints the line;
 *                                                         model-based properties also need fc.commands' replayPath)
 *
 * A failure prints fast-check's report (counterexample, seed, path) followed by the exact command
 * that replays it. Counterexamples worth keeping go into `regressions.ts`, which always runs.
 */
import fc from "fast-check";
import { REGRESSIONS } from "./regressions.ts";

function intFromEnv(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === "") return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new Error(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  return n;
}

/** `PROP_RUNS` overrides every property's default run count. */
export const PROP_RUNS = intFromEnv("PROP_RUNS");
/** `PROP_SEED` (with `PROP_PATH`) replays one run; without a path it reseeds every property. */
export const PROP_SEED = intFromEnv("PROP_SEED");
export const PROP_PATH = process.env.PROP_PATH?.trim() || undefined;
/** `fc.commands`' own replay path, which a model-based counterexample prints as `replayPath`. */
export const PROP_REPLAY_PATH = process.env.PROP_REPLAY_PATH?.trim() || undefined;

/** The number of runs for a property whose default is `defaultRuns`. */
export function runs(defaultRuns: number): number {
  return PROP_RUNS ?? defaultRuns;
}

/**
 * The vitest timeout for a property: the default budget, scaled with `PROP_RUNS` for deep runs.
 * `perRunMs` is a generous estimate of one run.
 */
export function timeoutFor(defaultRuns: number, perRunMs: number, floorMs = 60_000): number {
  return Math.max(floorMs, runs(defaultRuns) * perRunMs * 2);
}

export interface CheckOptions {
  /** The property's name as vitest shows it (for the replay line's `-t`). */
  name: string;
  /** The test file, relative to the repo (for the replay line). */
  file: string;
  defaultRuns: number;
}

type AnyProperty<Ts> = fc.IAsyncProperty<Ts> | fc.IProperty<Ts>;

/**
 * Run `property` like `fc.assert`, at `runs(defaultRuns)`, honouring `PROP_SEED`/`PROP_PATH`.
 * Then replay every regression recorded for this property name. On failure the error carries
 * fast-check's report and a ready-made replay command.
 *
 * A model-based property passes a function of `fc.commands`' `replayPath` instead: commands
 * shrink in a way the seed and path alone cannot replay.
 */
export async function checkProperty<Ts>(
  property: AnyProperty<Ts> | ((replayPath: string | undefined) => AnyProperty<Ts>),
  options: CheckOptions,
): Promise<void> {
  const build = typeof property === "function" ? property : () => property;
  const params: fc.Parameters<Ts> = {
    numRuns: runs(options.defaultRuns),
    ...(PROP_SEED !== undefined ? { seed: PROP_SEED } : {}),
    ...(PROP_SEED !== undefined && PROP_PATH !== undefined ? { path: PROP_PATH, endOnFailure: true } : {}),
  };
  await report(await fc.check(build(PROP_REPLAY_PATH) as fc.IAsyncProperty<Ts>, params), options);
  if (PROP_PATH !== undefined) return; // replaying one counterexample: nothing else
  for (const r of REGRESSIONS.filter((x) => x.property === options.name)) {
    const details = await fc.check(build(r.replayPath) as fc.IAsyncProperty<Ts>, { seed: r.seed, path: r.path, endOnFailure: true });
    await report(details, options, r.note);
  }
}

async function report<Ts>(details: fc.RunDetails<Ts>, options: CheckOptions, regression?: string): Promise<void> {
  if (!details.failed) return;
  const replayPath = details.counterexample ? /replayPath="([^"]*)"/.exec(fc.stringify(details.counterexample))?.[1] : undefined;
  const vars = [
    `PROP_SEED=${details.seed}`,
    ...(details.counterexamplePath !== null ? [`PROP_PATH=${details.counterexamplePath}`] : []),
    ...(replayPath ? [`PROP_REPLAY_PATH='${replayPath}'`] : []),
  ];
  const replay = `${vars.join(" ")} npx vitest run ${options.file} -t '${options.name}'`;
  const message = [
    regression ? `regression failed again (${regression})` : `property failed: ${options.name}`,
    `seed: ${details.seed}  path: ${details.counterexamplePath ?? "(none)"}${replayPath ? `  replayPath: ${replayPath}` : ""}`,
    `replay: ${replay}`,
    "",
    fc.defaultReportMessage(details) ?? "",
  ].join("\n");
  // Also on stderr: vitest truncates long assertion messages, the replay line must survive.
  process.stderr.write(`\n${message.split("\n").slice(0, 3).join("\n")}\n`);
  const err = new Error(message);
  if (details.errorInstance instanceof Error) err.cause = details.errorInstance;
  throw err;
}
