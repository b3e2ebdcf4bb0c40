/**
 * OpenAI's per-model RPM and TPM limits. Both replenish continuously (a token bucket whose
 * capacity is the per-minute limit), which is what the real `x-ratelimit-*` headers describe:
 * `remaining` is what is left now, `reset` is the time until the bucket is full again.
 */
import { goDuration } from "../shared/duration.ts";

/** Defaults when the plan names no limit: OpenAI's tier-5 limits for text-embedding-3-small. */
export const DEFAULT_LIMITS = { rpm: 10_000, tpm: 10_000_000 } as const;

class Bucket {
  level: number;
  readonly capacity: number;
  private updatedAt: number;

  constructor(capacity: number, updatedAt: number) {
    this.capacity = capacity;
    this.updatedAt = updatedAt;
    this.level = capacity;
  }

  /** Units per millisecond. */
  get rate(): number {
    return this.capacity / 60_000;
  }

  refill(now: number): void {
    this.level = Math.min(this.capacity, this.level + (now - this.updatedAt) * this.rate);
    this.updatedAt = now;
  }

  /** Milliseconds until `amount` units are available. */
  waitFor(amount: number): number {
    return amount <= this.level ? 0 : (amount - this.level) / this.rate;
  }

  /** Milliseconds until the bucket is full. */
  resetMs(): number {
    return (this.capacity - this.level) / this.rate;
  }
}

/** The result of {@link RateLimiter.take}. */
export type RateDecision =
  | { ok: true; headers: Record<string, string> }
  | {
      ok: false;
      type: "requests" | "tokens";
      limit: number;
      used: number;
      requested: number;
      /** Milliseconds until the request would fit; `undefined` when it never can (too large). */
      retryAfterMs: number | undefined;
      headers: Record<string, string>;
    };

/** RPM/TPM windows, one pair per model. */
export class RateLimiter {
  #windows = new Map<string, { requests: Bucket; tokens: Bucket }>();
  private limitsFor: (model: string) => { rpm: number; tpm: number };
  private now: () => number;

  constructor(limitsFor: (model: string) => { rpm: number; tpm: number }, now: () => number) {
    this.limitsFor = limitsFor;
    this.now = now;
  }

  #window(model: string) {
    const limits = this.limitsFor(model);
    let w = this.#windows.get(model);
    if (!w || w.requests.capacity !== limits.rpm || w.tokens.capacity !== limits.tpm) {
      w = { requests: new Bucket(limits.rpm, this.now()), tokens: new Bucket(limits.tpm, this.now()) };
      this.#windows.set(model, w);
    }
    const now = this.now();
    w.requests.refill(now);
    w.tokens.refill(now);
    return w;
  }

  /** The `x-ratelimit-*` headers for `model` as things stand. */
  headers(model: string): Record<string, string> {
    const w = this.#window(model);
    return {
      "x-ratelimit-limit-requests": String(w.requests.capacity),
      "x-ratelimit-limit-tokens": String(w.tokens.capacity),
      "x-ratelimit-remaining-requests": String(Math.max(0, Math.floor(w.requests.level))),
      "x-ratelimit-remaining-tokens": String(Math.max(0, Math.floor(w.tokens.level))),
      "x-ratelimit-reset-requests": goDuration(Math.ceil(w.requests.resetMs())),
      "x-ratelimit-reset-tokens": goDuration(Math.ceil(w.tokens.resetMs())),
    };
  }

  /** Takes one request and `tokens` tokens from `model`'s windows, or says which limit refused. */
  take(model: string, tokens: number): RateDecision {
    const w = this.#window(model);
    const refuse = (type: "requests" | "tokens", bucket: Bucket, requested: number): RateDecision => ({
      ok: false,
      type,
      limit: bucket.capacity,
      used: Math.min(bucket.capacity, Math.ceil(bucket.capacity - bucket.level)),
      requested,
      retryAfterMs: requested > bucket.capacity ? undefined : Math.ceil(bucket.waitFor(requested)),
      headers: this.headers(model),
    });
    if (w.requests.level < 1) return refuse("requests", w.requests, 1);
    if (w.tokens.level < tokens) return refuse("tokens", w.tokens, tokens);
    w.requests.level -= 1;
    w.tokens.level -= tokens;
    return { ok: true, headers: this.headers(model) };
  }

  reset(): void {
    this.#windows.clear();
  }
}
