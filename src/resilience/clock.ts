/**
 * Time as a parameter (STYLE: River's `now` argument, graphile-worker's `useNodeTime`): the
 * rate limiter reads the time and waits only through a `Clock`, so tests drive it with a
 * `ManualClock` instead of sleeping.
 */
import { setTimeout as sleepFor } from "node:timers/promises";
import { TransientError } from "../errors.ts";

export interface Clock {
  /** Milliseconds on a monotonic-enough scale (`Date.now()` in production). */
  now(): number;
  /**
   * Resolve after `ms` (at once for `ms <= 0`). Rejects with a transient `aborted`
   * `PipelineError` when `signal` aborts, so a shutdown cuts every wait short.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export function abortedError(signal: AbortSignal | undefined, what = "wait"): TransientError {
  const reason = signal?.reason;
  return new TransientError("aborted", `${what} aborted${reason instanceof Error ? `: ${reason.message}` : ""}`, { cause: reason });
}

/** The real clock. Timers are unref'd: a pending rate-limit wait never keeps the process alive. */
export const systemClock: Clock = {
  now: () => Date.now(),
  async sleep(ms, signal) {
    if (signal?.aborted) throw abortedError(signal);
    if (ms <= 0) return;
    try {
      await sleepFor(ms, undefined, { signal, ref: false });
    } catch (err) {
      if (signal?.aborted) throw abortedError(signal);
      throw err;
    }
  },
};

interface PendingSleep {
  at: number;
  seq: number;
  resolve: () => void;
}

/**
 * A clock that moves only when told. `advance(ms)` wakes every sleeper due in that span, in
 * time order, letting each one's continuation run (and schedule new sleeps) before moving on.
 *
 * @example
 * const clock = new ManualClock();
 * const done = limiter.acquire(1000);
 * await clock.advance(60_000);
 * await done;
 */
export class ManualClock implements Clock {
  #now: number;
  #seq = 0;
  #pending: PendingSleep[] = [];

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortedError(signal));
    if (ms <= 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const entry: PendingSleep = { at: this.#now + ms, seq: this.#seq++, resolve: () => {} };
      const onAbort = () => {
        this.#pending = this.#pending.filter((p) => p !== entry);
        reject(abortedError(signal));
      };
      entry.resolve = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#pending.push(entry);
    });
  }

  /** Number of sleeps not yet due. */
  get pendingSleeps(): number {
    return this.#pending.length;
  }

  /** Time at which the earliest sleeper wakes, if any. */
  get nextWakeAt(): number | undefined {
    return this.#pending.reduce<number | undefined>((min, p) => (min === undefined || p.at < min ? p.at : min), undefined);
  }

  /** Move time forward by `ms`, waking sleepers in order. */
  async advance(ms: number): Promise<void> {
    const target = this.#now + ms;
    await settle();
    for (;;) {
      const due = this.#pending.filter((p) => p.at <= target).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (!due) break;
      this.#pending = this.#pending.filter((p) => p !== due);
      this.#now = Math.max(this.#now, due.at);
      due.resolve();
      await settle();
    }
    this.#now = target;
    await settle();
  }

  /** Jump to the next sleeper's wake time (and wake it). Returns false if nobody sleeps. */
  async advanceToNext(): Promise<boolean> {
    const at = this.nextWakeAt;
    if (at === undefined) return false;
    await this.advance(at - this.#now);
    return true;
  }
}

/** Let promise continuations run (a macrotask turn flushes all pending microtasks). */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
