/**
 * Named fault points. The worker passes through one at every step boundary: after a claim,
 * before and after each external call, before and after each commit. In production they do
 * nothing. Tests, property tests and the scenario runner install a `FaultInjector` to crash or
 * pause a worker exactly there.
 *
 * Point names: `claim.after`, `stage.<stage>.before`, `stage.<stage>.after`,
 * `call.<service>.<op>.before|after`, `commit.<what>.before|after` ({@link FAULT_POINTS}).
 */
import { mkdirSync, writeSync } from "node:fs";
import { join } from "node:path";

export interface FaultPoints {
  hit(point: string, info?: { jobId?: string; [k: string]: unknown }): Promise<void> | void;
}

export const NO_FAULTS: FaultPoints = { hit() {} };

/** Thrown by an injector to simulate the process dying at a point: the worker must not clean up. */
export class SimulatedCrash extends Error {
  readonly point: string;

  constructor(point: string) {
    super(`simulated crash at fault point ${point}`);
    this.point = point;
    this.name = "SimulatedCrash";
  }
}

export interface FaultRule {
  /** Exact point name, or a RegExp. */
  point: string | RegExp;
  /** Fire on the nth matching hit (1-based); default the first. */
  nth?: number;
  action: "crash" | "throw" | ((point: string, info?: Record<string, unknown>) => Promise<void> | void);
  /** Error to throw for `throw`. */
  error?: Error;
}

/** A scripted injector: fires each rule once, on its nth matching hit. Records every point seen. */
export class FaultInjector implements FaultPoints {
  readonly seen: string[] = [];
  private readonly counts = new Map<FaultRule, number>();
  private readonly rules: FaultRule[];

  constructor(rules: FaultRule[] = []) {
    this.rules = rules;
  }

  async hit(point: string, info?: Record<string, unknown>): Promise<void> {
    this.seen.push(point);
    for (const rule of this.rules) {
      const matches = typeof rule.point === "string" ? rule.point === point : rule.point.test(point);
      if (!matches) continue;
      const n = (this.counts.get(rule) ?? 0) + 1;
      this.counts.set(rule, n);
      if (n !== (rule.nth ?? 1)) continue;
      if (rule.action === "crash") throw new SimulatedCrash(point);
      if (rule.action === "throw") throw rule.error ?? new Error(`injected failure at ${point}`);
      await rule.action(point, info);
    }
  }
}

/** The line a worker writes just before it freezes itself (the scenario runner thaws it). */
export const FREEZE_LINE = "frozen at fault point";

/**
 * Every fault point the worker passes (a test greps the sources to keep this list exact), so a
 * scenario naming a point that does not exist is refused before anything starts.
 */
export const FAULT_POINTS = [
  "claim.after",
  ...["submit_parse", "reconcile_parse", "validate", "chunk", "embed", "finish"].flatMap((s) => [`stage.${s}.before`, `stage.${s}.after`]),
  "call.llamaparse.find.before",
  "call.llamaparse.submit.before",
  "call.llamaparse.submit.after",
  "call.llamaparse.get.before",
  "call.llamaparse.get.after",
  "call.storage.download.before",
  "call.storage.upload.before",
  "call.storage.upload.after",
  "call.openai.embed.before",
  "call.openai.embed.after",
  "call.openai.files.create.before",
  "call.openai.files.create.after",
  "call.openai.batches.create.before",
  "call.openai.batches.create.after",
  "commit.parse_intent.before",
  "commit.parse_queued.before",
  "commit.parsed.before",
  "commit.parsed.after",
  "commit.parse_validated.before",
  "commit.parse_validated.after",
  "commit.chunks.before",
  "commit.chunks.after",
  "commit.chunks_stored.before",
  "commit.embedding_queued.after",
  "commit.vectors.before",
  "commit.vectors.after",
  "commit.batch_ingested.before",
  "commit.complete.before",
  "commit.complete.after",
] as const;

/** One crash or freeze spec: a point, its nth hit, and optionally the job the worker must be holding. */
export interface CrashSpec {
  point: string;
  nth: number;
  jobId?: string | undefined;
}

/** `point[#n][@jobId]` → its parts; `undefined` when the text is not of that form. */
export function parseCrashSpec(text: string): CrashSpec | undefined {
  const m = /^([a-z_.]+)(?:#(\d+))?(?:@([0-9a-f-]{36}))?$/.exec(text.trim());
  if (!m || Number(m[2] ?? 1) < 1) return undefined;
  return { point: m[1]!, nth: Number(m[2] ?? 1), jobId: m[3] };
}

/** Claims a crash for this process: the first `mkdir` of its marker wins (atomic across processes). */
function claimOnce(dir: string, spec: string): boolean {
  try {
    mkdirSync(join(dir, spec.replace(/[^a-z0-9._-]/gi, "_")), { recursive: false });
    return true;
  } catch {
    return false;
  }
}

/** The line a worker writes (synchronously) just before it kills itself, so the runner knows which crash fired. */
export const CRASH_LINE = "upload-pipeline crash point";

/**
 * For real worker processes (the scenario runner):
 * - `UPLOAD_PIPELINE_CRASH_AT=spec[,spec…]`, each `point[#n][@jobId]`, makes the process SIGKILL
 *   itself on the nth hit of that point (counting only hits while working on `jobId` when
 *   given), a real crash with no cleanup at all, after the line
 *   `{"msg":"upload-pipeline crash point","point","jobId"}` on stdout;
 * - `UPLOAD_PIPELINE_FREEZE_AT=point[#n],…` makes it SIGSTOP itself there (a long GC pause, a VM
 *   migration), after one line on stdout that tells the runner to SIGCONT it later.
 * Both lines are written synchronously, so they are out before the process stops. With
 * `beforeCrash` (tracing on: flush the spans) a crash waits for it after its line, so the trace
 * shows what the killed worker did up to the point; this slot goes no further meanwhile.
 * With `onceDir` (`UPLOAD_PIPELINE_CRASH_ONCE_DIR`), a targeted crash fires once across every
 * process of a run: processes started before it fired still carry it, and the job they resume
 * passes the point again. A process that has begun to crash (its line written, `beforeCrash`
 * running) stops every other slot at its next fault point, and a slot that stops at a targeted
 * point of its own writes that crash's line too: it dies there with the process. Without that, a
 * slot could commit a transition during the flush and be killed just after, at a point its job
 * never passes again (`commit.embedding_queued.after`), and the runner reported that kill as
 * never having happened.
 */
export function faultPointsFromEnv(
  crashAt: string | undefined,
  freezeAt?: string | undefined,
  onceDir?: string | undefined,
  beforeCrash?: () => Promise<void>,
): FaultPoints {
  const parse = (list: string | undefined) =>
    (list ?? "")
      .split(",")
      .filter((s) => s.trim())
      .flatMap((text) => {
        const spec = parseCrashSpec(text);
        return spec ? [{ text: text.trim(), spec }] : [];
      });
  let crashing = false;
  const rules = [
    ...parse(crashAt).map(({ text, spec }) => ({
      spec,
      act: async (point: string) => {
        if (spec.jobId && onceDir && !claimOnce(onceDir, text)) return;
        // The job only for a targeted crash: a life's own point must be counted as that life's.
        writeSync(1, `${JSON.stringify({ msg: CRASH_LINE, point, jobId: spec.jobId ?? null })}\n`);
        if (crashing) return; // already on its way down: this crash is the same death (hit() holds the slot)
        crashing = true;
        await beforeCrash?.();
        process.kill(process.pid, "SIGKILL");
      },
    })),
    ...parse(freezeAt).map(({ text, spec }) => ({
      spec,
      act: async (point: string) => {
        writeSync(1, `${JSON.stringify({ msg: FREEZE_LINE, point: text, pid: process.pid, at: point })}\n`);
        process.kill(process.pid, "SIGSTOP");
      },
    })),
  ];
  if (rules.length === 0) return NO_FAULTS;
  const counts = new Map<CrashSpec, number>();
  return {
    async hit(p: string, info?: { jobId?: string }) {
      for (const { spec, act } of rules) {
        if (p !== spec.point || (spec.jobId && info?.jobId !== spec.jobId)) continue;
        const n = (counts.get(spec) ?? 0) + 1;
        counts.set(spec, n);
        if (n === spec.nth) await act(p);
      }
      if (crashing) await new Promise<never>(() => {}); // this process is about to die: no slot goes past a fault point
    },
  };
}
