/**
 * Capped exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and
 * Jitter"): delay = random(0, min(cap, base · 2^(attempt-1))). Full jitter spreads retries of
 * many jobs that failed together (an outage) instead of sending them back in waves. An upstream
 * `retry-after` wins when it asks for longer.
 */
export function backoffDelayMs(attempt: number, opts: { baseMs: number; maxMs: number; random?: () => number; retryAfterMs?: number | undefined }): number {
  const ceiling = Math.min(opts.maxMs, opts.baseMs * 2 ** Math.max(0, attempt - 1));
  const jittered = Math.floor((opts.random ?? Math.random)() * ceiling);
  return Math.max(jittered, opts.retryAfterMs ?? 0);
}
