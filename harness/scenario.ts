/**
 * Scenario files (`scenarios/*.json`): a declarative description of one run — the corpus, the
 * worker processes, the mocks' fault plan, the crash schedule and the expected outcome. Validated
 * with zod; a bad file gets an error naming the field and the fix.
 */
import { readdir, readFile } from "node:fs/promises";
import { basename, dirname, isAbsolute, join } from "node:path";
import { z } from "zod";
import { FaultPlanSchema } from "../mocks/shared/faults.ts";
import { configForLocalMocks, configSchema } from "../src/config.ts";
import { ConfigError } from "../src/errors.ts";
import { Priority } from "../src/scheduling/lanes.ts";
import { ALL_STATES, isTerminal, type JobStatus } from "../src/state-machine/table.ts";
import { FAULT_POINTS, parseCrashSpec } from "../src/worker/faultPoints.ts";
import { PhasesSchema } from "./phases.ts";
import { REACHABLE_EVENTS } from "./reachability.ts";

const terminalState = z
  .enum(ALL_STATES)
  .refine((s) => isTerminal(s), { message: "must be a terminal state: complete, failed_parse, failed_chunking or failed_embedding" });

/** A fault point spec, `point[#n]`, checked against the points the worker defines. */
const faultPoint = z.string().refine(
  (text) => {
    const spec = parseCrashSpec(text);
    return spec !== undefined && !spec.jobId && (FAULT_POINTS as readonly string[]).includes(spec.point);
  },
  {
    message: `must be a fault point the worker defines, optionally with #n (its nth hit), e.g. commit.vectors.after#2; the points: ${FAULT_POINTS.join(", ")}`,
  },
);

const CRASH_FORMS =
  '{"atMs", "worker"?} (a time), {"when": {"status", "batchesDone"?}} (a state), or {"document", "at"} (the worker holding that document\'s job at a fault point)';

/**
 * Kill a worker process with SIGKILL: at a time, when some job enters a state, or when the worker
 * holding one document's job reaches a fault point. One object with the fields of exactly one
 * form, so a mistake is named by its field instead of "Invalid input".
 */
const CrashSchema = z
  .strictObject({
    /** Milliseconds after the uploads finished. */
    atMs: z.number().int().min(0).optional(),
    /** Which worker process (0-based); default: a seeded random one. */
    worker: z.number().int().min(0).optional(),
    /** When some job enters this state (and, optionally, has stored at least `batchesDone` batches). */
    when: z.strictObject({ status: z.enum(ALL_STATES), batchesDone: z.number().int().min(0).optional() }).optional(),
    /** The document (0-based index in upload order, or its file name) whose job the killed worker holds… */
    document: z
      .union([z.number().int().min(0), z.string().min(1)], { error: "must be a 0-based index in upload order or a file name of the corpus" })
      .optional(),
    /** …when it reaches this fault point (`point#n`: the nth time it passes there with that job). */
    at: faultPoint.optional(),
    /** …in its model migration's job for this profile (an `actions` migrate-model start), not its upload's job. */
    profile: z.string().min(1).optional(),
  })
  .superRefine((c, ctx) => {
    const forms = [c.atMs !== undefined, c.when !== undefined, c.document !== undefined].filter(Boolean).length;
    if (forms !== 1) ctx.addIssue({ code: "custom", message: `give exactly one form: ${CRASH_FORMS}` });
    if (c.worker !== undefined && c.atMs === undefined) ctx.addIssue({ code: "custom", path: ["worker"], message: "only goes with atMs" });
    if ((c.document === undefined) !== (c.at === undefined))
      ctx.addIssue({ code: "custom", path: [c.document === undefined ? "document" : "at"], message: "document and at go together" });
    if (c.profile !== undefined && c.document === undefined) ctx.addIssue({ code: "custom", path: ["profile"], message: "only goes with document and at" });
  })
  .transform((c): Crash => {
    if (c.when) return { when: c.when };
    if (c.document !== undefined) return { document: c.document, at: c.at!, ...(c.profile !== undefined ? { profile: c.profile } : {}) };
    return { atMs: c.atMs!, worker: c.worker };
  });

export type Crash =
  | { atMs: number; worker?: number | undefined }
  | { when: { status: JobStatus; batchesDone?: number | undefined } }
  | { document: number | string; at: string; profile?: string };

/** Environment variables a scenario may set: the worker's own configuration, minus what the runner wires. */
export const RUNNER_WIRED = new Set([
  "DATABASE_URL",
  "DATABASE_LISTEN_URL",
  "OPENAI_BASE_URL",
  "OPENAI_API_KEY",
  "LLAMA_CLOUD_BASE_URL",
  "LLAMA_CLOUD_API_KEY",
  "SUPABASE_URL",
  "SUPABASE_SERVICE_ROLE_KEY",
  "SUPABASE_JWT_SECRET",
  "WEBHOOK_BASE_URL",
  "WORKER_ID",
]);
export const SETTABLE_WORKER_ENV = Object.keys(configSchema.shape).filter((k) => !RUNNER_WIRED.has(k));

/** workerEnv checked by the worker's own config schema: unknown names and bad values are named before anything starts. */
const WorkerEnvSchema = z.record(z.string(), z.string()).superRefine((env, ctx) => {
  for (const key of Object.keys(env)) {
    if (!SETTABLE_WORKER_ENV.includes(key)) {
      ctx.addIssue({ code: "custom", path: [key], message: `not a worker setting the scenario may set; valid: ${SETTABLE_WORKER_ENV.join(", ")}` });
    }
  }
  try {
    configForLocalMocks("http://127.0.0.1:9", Object.fromEntries(Object.entries(env).filter(([k]) => SETTABLE_WORKER_ENV.includes(k))));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const problem of err.problems) {
      const [key, ...rest] = problem.split(": ");
      ctx.addIssue({ code: "custom", path: [key!], message: rest.join(": ") });
    }
  }
});

export const ScenarioSchema = z
  .strictObject({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, "use lower-case letters, digits and dashes (it names the report section)"),
    description: z.string().min(1),
    /** Seeds the corpus, the mocks' fault draws and the random choices of the crash schedule. */
    seed: z.number().int().default(1),
    corpus: z
      .strictObject({
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
        /**
         * Real files uploaded after the synthetic ones: a folder (every PDF, DOCX, HTML, Markdown and
         * text file under it) or a glob, relative to the scenario file.
         */
        files: z.string().min(1).optional(),
        /**
         * Tenants uploading in waves, after the documents above: each wave's uploads finish before
         * the next one's start (tenant A uploads 300, then B uploads 3). Each tenant is one user.
         */
        tenants: z
          .array(
            z.strictObject({
              name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, "use lower-case letters, digits and dashes"),
              documents: z.number().int().min(1).max(1000),
              kib: z.number().min(0.1).max(2048).default(0.3),
              priority: Priority.default("interactive"),
            }),
          )
          .default([]),
      })
      .default({ documents: 8, minKiB: 2, maxKiB: 24, large: { count: 0, kib: 512 }, poison: 0, empty: 0, reuploads: 0, tenants: [] })
      .refine((c) => c.minKiB <= c.maxKiB, { message: "minKiB must be <= maxKiB", path: ["maxKiB"] }),
    workers: z
      .strictObject({
        processes: z.number().int().min(1).max(16).default(2),
        slots: z.number().int().min(1).max(32).default(2),
      })
      .default({ processes: 2, slots: 2 }),
    /** Environment overrides for the worker processes and the API (e.g. MAX_ATTEMPTS), checked by the worker's config schema. */
    workerEnv: WorkerEnvSchema.default({}),
    /** The mocks' fault plan (see mocks/README.md). */
    faults: FaultPlanSchema.default({}),
    /**
     * Phases of the run that fault rules name (`"phase": "openai-down"`): each starts and ends when
     * the run reaches a state of its own (jobs by state, faults injected, time since the uploads
     * began), whatever the machine's speed. See harness/phases.ts.
     */
    phases: PhasesSchema.default({}),
    crashes: z.array(CrashSchema).default([]),
    /**
     * Fault points at which workers kill themselves: each new worker process (the first ones and
     * every restart) takes the next point from the list (`point` or `point#n`, the nth hit).
     */
    crashPoints: z.array(faultPoint).default([]),
    /**
     * Freeze a worker process (SIGSTOP) at a fault point for `forMs`, then SIGCONT it: a long GC
     * pause or a VM migration. The process stops itself at the point (`point` or `point#n`, the
     * nth hit) in its first life; the runner thaws it.
     */
    freezes: z
      .array(
        z.strictObject({
          point: faultPoint,
          forMs: z.number().int().min(1).max(600_000),
          /** Which worker process (0-based). */
          worker: z.number().int().min(0).default(0),
        }),
      )
      .default([]),
    /**
     * Rare events that must have happened (Antithesis-style `sometimes`), or the scenario fails:
     * see harness/reachability.ts for the names.
     */
    sometimes: z.array(z.enum(REACHABLE_EVENTS, { message: `must be one of ${REACHABLE_EVENTS.join(", ")}` })).default([]),
    /**
     * Operator commands run in order, each once the run is quiet (every job terminal), the run
     * then waiting to be quiet again: `{"migrateModel": ["start", "--to", "small-512", …]}` is
     * `npm run migrate-model -- start --to small-512 …` against the run's database. A command that
     * refuses (exit ≠ 0) fails the run.
     */
    actions: z
      .array(
        z.strictObject({
          migrateModel: z
            .array(z.string())
            .min(1)
            .refine((argv) => ["plan", "start", "status", "cutover", "abort"].includes(argv[0]!), {
              message: "must start with a migrate-model command: plan, start, status, cutover or abort",
            }),
        }),
      )
      .default([]),
    /** Restart the PostgreSQL server this many ms after the uploads finished. */
    postgresRestartAtMs: z.number().int().min(0).optional(),
    /** After the first quiet point, retry every dead-lettered job through the API, then wait again. */
    retryFailed: z.boolean().default(false),
    expect: z
      .strictObject({
        /** The state ordinary (and large, and re-uploaded) documents must end in. */
        documents: terminalState.default("complete"),
        poison: terminalState.default("failed_parse"),
        empty: terminalState.default("failed_parse"),
      })
      .default({ documents: "complete", poison: "failed_parse", empty: "failed_parse" }),
    /**
     * Fairness bounds the run must meet: every document of `tenant` completes before `other`'s
     * `count`-th completion, counted from `tenant`'s first upload (so the bound is about the
     * scheduler, not about how far `other` got while it was still uploading).
     */
    fairness: z
      .array(z.strictObject({ tenant: z.string(), completesWithin: z.strictObject({ other: z.string(), count: z.number().int().min(1) }) }))
      .default([]),
    /** The OpenAI mock's 429s must stay under this share of its answers (percent). */
    maxRateLimitedPct: z.number().min(0).max(100).optional(),
    /** The run fails, listing stuck jobs, if it is not quiet by then. */
    deadlineMs: z.number().int().min(1000).max(1_800_000).default(90_000),
    /** Measure throughput at these worker counts instead of checking one run (the scaling scenario). */
    scaling: z.strictObject({ workerCounts: z.array(z.number().int().min(1).max(16)).min(1) }).optional(),
  })
  .superRefine((s, ctx) => {
    // Every phase a rule names is defined, and every defined phase is named by a rule.
    const defined = Object.keys(s.phases);
    const used = new Set<string>();
    for (const service of ["openai", "llamaparse", "storage"] as const) {
      for (const kind of ["errors", "bursts", "outages"] as const) {
        (s.faults[service]?.[kind] ?? []).forEach((rule, i) => {
          if (rule.phase === undefined) return;
          used.add(rule.phase);
          if (!defined.includes(rule.phase))
            ctx.addIssue({
              code: "custom",
              path: ["faults", service, kind, i, "phase"],
              message: `"${rule.phase}" is not defined in "phases"; ${defined.length ? `defined: ${defined.join(", ")}` : `add "phases": {"${rule.phase}": {"start": {…}, "end": {…}}}`}`,
            });
        });
      }
    }
    for (const name of defined.filter((n) => !used.has(n)))
      ctx.addIssue({
        code: "custom",
        path: ["phases", name],
        message: `no fault rule names this phase: add "phase": "${name}" to an outage, burst or error rule`,
      });
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

/** Scenario files may hold whole-line `//` comments (the starter from `init` does). */
function stripLineComments(text: string): string {
  return text
    .split("\n")
    .map((line) => (line.trimStart().startsWith("//") ? "" : line))
    .join("\n");
}

export async function loadScenarioFile(path: string): Promise<Scenario> {
  let json: unknown;
  try {
    json = JSON.parse(stripLineComments(await readFile(path, "utf8")));
  } catch (err) {
    throw new ScenarioFileError(path, [`not readable JSON: ${(err as Error).message}`]);
  }
  const scenario = parseScenario(json, path);
  if (scenario.corpus.files && !isAbsolute(scenario.corpus.files)) scenario.corpus.files = join(dirname(path), scenario.corpus.files);
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
