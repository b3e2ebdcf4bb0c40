/**
 * Named fault points. The worker passes through one at every step boundary: after a claim,
 * before and after each external call, before and after each commit. In production they do
 * nothing. Tests, property tests and the scenario runner install a `FaultInjector` to crash or
 * pause a worker exactly there.
 *
 * Point names: `claim.after`, `stage.<stage>.before`, `stage.<stage>.after`,
 * `call.<service>.<op>.before|after`, `commit.<what>.before|after`.
 */
export interface FaultPoints {
  hit(point: string, info?: { jobId?: string; [k: string]: unknown }): Promise<void> | void;
}

export const NO_FAULTS: FaultPoints = { hit() {} };

/** Thrown by an injector to simulate the process dying at a point: the worker must not clean up. */
export class SimulatedCrash extends Error {
  constructor(readonly point: string) {
    super(`simulated crash at fault point ${point}`);
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
  constructor(private readonly rules: FaultRule[] = []) {}

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

/**
 * For real worker processes (the scenario runner): `UPLOAD_PIPELINE_CRASH_AT=point[#n]` makes
 * the process SIGKILL itself on the nth hit of that point, a real crash with no cleanup at all.
 */
export function faultPointsFromEnv(spec: string | undefined): FaultPoints {
  if (!spec) return NO_FAULTS;
  const [point, nth] = spec.split("#");
  let count = 0;
  return {
    hit(p: string) {
      if (p !== point) return;
      count += 1;
      if (count === Number(nth ?? 1)) process.kill(process.pid, "SIGKILL");
    },
  };
}
