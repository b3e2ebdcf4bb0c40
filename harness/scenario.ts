/**
 * Scenario files (`scenarios/*.json`): a declarative description of one run — the corpus, the
 * worker processes, the mocks' fault plan, the crash schedule and the expected outcome. Validated
 * with zod; a bad file gets an error naming the field and the fix.
 */
import { readdir, readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { z } from "zod";
import { FaultPlanSchema } from "../mocks/shared/faults.ts";
import { ALL_STATES, isTerminal, type JobStatus } from "../src/state-machine/table.ts";

const terminalState = z
  .enum(ALL_STATES)
  .refine((s) => isTerminal(s), { message: "must be a terminal state: complete, failed_parse, failed_chunking or failed_embedding" });

/** Kill a worker process with SIGKILL: at a time, when an event is seen in the database, or at a fault point. */
const CrashSchema = z.union([
  z.strictObject({
    /** Milliseconds after the uploads finished. */
    atMs: z.number().int().min(0),
    /** Which worker process (0-based); default: a seeded random one. */
    worker: z.number().int().min(0).optional(),
  }),
  z.strictObject({
    /** When some job enters this state (and, optionally, has stored at least `batchesDone` batches). */
    when: z.strictObject({
      status: z.enum(ALL_STATES),
      batchesDone: z.number().int().min(0).optional(),
    }),
  }),
]);

export const ScenarioSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, "use lower-case letters, digits and dashes (it names the report section)"),
  description: z.string().min(1),
  /** Seeds the corpus, the mocks' fault draws and the random choices of the crash schedule. */
  seed: z.number().int().default(1),
  corpus: z.strictObject({
    /** Ordinary documents. */
    documents: z.number().int().min(0).max(500).default(8),
    /** Their size range in KiB (seeded uniform). */
    minKiB: z.number().min(0.1).max(2048).default(2),
    maxKiB: z.number().min(0.1).max(2048).default(24),
    /** Extra large documents (at least one is the point of the large-document scenario). */
    large: z.strictObject({ count: z.number().int().min(0).max(10), kib: z.number().min(1).max(20_480) }).default({ count: 0, kib: 512 }),
    /** Documents LlamaParse reports FAILED (dead-letter candidates). */
    poison: z.number().int().min(0).max(100).default(0),
    /** Documents that parse to no text (validation failures). */
    empty: z.number().int().min(0).max(100).default(0),
    /** Re-uploads of documents already in the corpus (upload must be idempotent). */
    reuploads: z.number().int().min(0).max(100).default(0),
  }).default({ documents: 8, minKiB: 2, maxKiB: 24, large: { count: 0, kib: 512 }, poison: 0, empty: 0, reuploads: 0 })
    .refine((c) => c.minKiB <= c.maxKiB, { message: "minKiB must be <= maxKiB", path: ["maxKiB"] }),
  workers: z.strictObject({
    processes: z.number().int().min(1).max(16).default(2),
    slots: z.number().int().min(1).max(32).default(2),
  }).default({ processes: 2, slots: 2 }),
  /** Environment overrides for the worker processes (e.g. MAX_ATTEMPTS, LEASE_SECONDS). */
  workerEnv: z.record(z.string().regex(/^[A-Z][A-Z0-9_]*$/), z.string()).default({}),
  /** The mocks' fault plan (see mocks/README.md). */
  faults: FaultPlanSchema.default({}),
  crashes: z.array(CrashSchema).default([]),
  /**
   * Fault points at which workers kill themselves: each new worker process (the first ones and
   * every restart) takes the next point from the list (`point` or `point#n`, the nth hit).
   */
  crashPoints: z.array(z.string().regex(/^[a-z_.]+(#\d+)?$/, "a fault point name such as commit.vectors.after#2")).default([]),
  /**
   * Freeze a worker process (SIGSTOP) at a fault point for `forMs`, then SIGCONT it: a long GC
   * pause or a VM migration. The process stops itself at the point (`point` or `point#n`, the
   * nth hit) in its first life; the runner thaws it.
   */
  freezes: z
    .array(
      z.strictObject({
        point: z.string().regex(/^[a-z_.]+(#\d+)?$/, "a fault point name such as call.llamaparse.submit.before#2"),
        forMs: z.number().int().min(1).max(600_000),
        /** Which worker process (0-based). */
        worker: z.number().int().min(0).default(0),
      }),
    )
    .default([]),
  /** Restart the PostgreSQL server this many ms after the uploads finished. */
  postgresRestartAtMs: z.number().int().min(0).optional(),
  /** After the first quiet point, retry every dead-lettered job through the API, then wait again. */
  retryFailed: z.boolean().default(false),
  expect: z.strictObject({
    /** The state ordinary (and large, and re-uploaded) documents must end in. */
    documents: terminalState.default("complete"),
    poison: terminalState.default("failed_parse"),
    empty: terminalState.default("failed_parse"),
  }).default({ documents: "complete", poison: "failed_parse", empty: "failed_parse" }),
  /** The run fails, listing stuck jobs, if it is not quiet by then. */
  deadlineMs: z.number().int().min(1000).max(1_800_000).default(90_000),
  /** Measure throughput at these worker counts instead of checking one run (the scaling scenario). */
  scaling: z.strictObject({ workerCounts: z.array(z.number().int().min(1).max(16)).min(1) }).optional(),
});

export type Scenario = z.output<typeof ScenarioSchema>;
export type ExpectedState = JobStatus;

export class ScenarioFileError extends Error {
  readonly file: string;

  constructor(file: string, problems: string[]) {
    super(`${file}: invalid scenario:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.file = file;
    this.name = "ScenarioFileError";
  }
}

/** Parse one scenario (already-read JSON); errors name the field and what it expects. */
export function parseScenario(input: unknown, file = "<scenario>"): Scenario {
  const result = ScenarioSchema.safeParse(input);
  if (result.success) return result.data;
  throw new ScenarioFileError(
    file,
    result.error.issues.map((i) => `${i.path.map(String).join(".") || "(root)"}: ${i.message}`),
  );
}

export async function loadScenarioFile(path: string): Promise<Scenario> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, "utf8"));
  } catch (err) {
    throw new ScenarioFileError(path, [`not readable JSON: ${(err as Error).message}`]);
  }
  const scenario = parseScenario(json, path);
  if (`${scenario.name}.json` !== basename(path)) {
    throw new ScenarioFileError(path, [`name: "${scenario.name}" must match the file name (${basename(path)})`]);
  }
  return scenario;
}

export const SCENARIOS_DIR = new URL("../scenarios/", import.meta.url).pathname;

/** A suite that does not exist or holds no scenario file (a user mistake: exit 2, no stack). */
export class SuiteError extends Error {
  override name = "SuiteError";
}

/** The folder of a suite: `default` is scenarios/ itself, any other name a folder under it. */
export function suiteDir(suite: string, root = SCENARIOS_DIR): string {
  return suite === "default" ? root : join(root, suite);
}

/** Every scenario file of a suite (`scenarios/*.json`, or `scenarios/<suite>/*.json`), by name. */
export async function loadSuite(suite = "default", root = SCENARIOS_DIR): Promise<Scenario[]> {
  const dir = suiteDir(suite, root);
  const suites = async () => (await readdir(root, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    throw new SuiteError(`no suite named "${suite}" (no folder ${dir}); suites: default, ${(await suites()).join(", ")}`);
  }
  const files = names.filter((f) => f.endsWith(".json")).sort();
  if (files.length === 0) throw new SuiteError(`the ${suite} suite has no scenario files: add a <name>.json to ${dir}`);
  return Promise.all(files.map((f) => loadScenarioFile(join(dir, f))));
}
