/**
 * Named fault points. The worker passes through one at every step boundary: after a claim,
 * before and after each external call, before and after each commit. In production they do
 * nothing. Tests, property tests and the scenario runner install a `FaultInjector` to crash or
 * pause a worker exactly there.
 *
 * Point names: `claim.after`, `stage.<stage>.before`, `stage.<stage>.after`,
 * `call.<service>.<op>.before|after`, `commit.<what>.before|after`.
 */
import { writeSync } from "node:fs";

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
 * For real worker processes (the scenario runner):
 * - `UPLOAD_PIPELINE_CRASH_AT=point[#n]` makes the process SIGKILL itself on the nth hit of
 *   that point, a real crash with no cleanup at all;
 * - `UPLOAD_PIPELINE_FREEZE_AT=point[#n],…` makes it SIGSTOP itself there (a long GC pause, a VM
 *   migration), after one line on stdout that tells the runner to SIGCONT it later.
 */
export function faultPointsFromEnv(crashAt: string | undefined, freezeAt?: string | undefined): FaultPoints {
  const rules = [
    ...(crashAt ? [{ spec: crashAt, act: () => process.kill(process.pid, "SIGKILL") }] : []),
    ...(freezeAt ?? "").split(",").filter(Boolean).map((spec) => ({
      spec,
      act: (point: string) => {
        // Synchronously, so the line is out before the process stops.
        writeSync(1, `${JSON.stringify({ msg: FREEZE_LINE, point: spec, pid: process.pid, at: point })}\n`);
        process.kill(process.pid, "SIGSTOP");
      },
    })),
  ];
  if (rules.length === 0) return NO_FAULTS;
  const counts = new Map<string, number>();
  return {
    hit(p: string) {
      for (const { spec, act } of rules) {
        const [point, nth] = spec.split("#");
        if (p !== point) continue;
        const n = (counts.get(spec) ?? 0) + 1;
        counts.set(spec, n);
        if (n === Number(nth ?? 1)) act(p);
      }
    },
  };
}
