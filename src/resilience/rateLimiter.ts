/**
 * OpenAI request and token budgets (SPEC §5 Resilience, §9 "≥ 95 % of TPM with < 1 % 429s").
 *
 * Written here rather than taken from a library: the well-known limiters (bottleneck, limiter,
 * p-throttle) pace one dimension from a local clock; we need two budgets at once, a reservation
 * sized per request, correction from the server's own headers (other processes share the key),
 * a global pause on 429, and an injectable clock so tests run without sleeping.
 *
 * The model, per budget (requests, tokens):
 *
 * - **Local bucket.** Capacity = the per-minute limit, refilled continuously at limit/60 s.
 *   The configured limit is capped by `x-ratelimit-limit-*` when the server reports a lower one.
 * - **Server view.** Each answer's `x-ratelimit-remaining-*` is what the server had left after
 *   counting that request; `x-ratelimit-reset-*` is when it will be back to the limit. We
 *   project the server's level linearly from (answer time, remaining) to (answer time + reset,
 *   limit) and subtract what we have sent since that the server may not have counted yet. The
 *   usable budget is the lesser of the local bucket and this projection, so N worker processes
 *   sharing one key converge on the key's real budget instead of each spending a full one.
 * - **Pause.** A 429's `retryAfterMs` stops every caller until then.
 *
 * Callers are served first come, first served, so a large batch is not starved by small ones.
 * A request larger than the whole capacity waits for a full bucket and then drives it negative
 * (it is paid for by the requests that follow).
 */
import type { EmbedResult, EmbedTarget, EmbeddingsClient, RateLimitInfo } from "../clients/openai.ts";
import { countBatchTokens } from "../clients/tokens.ts";
import { coerceError } from "../errors.ts";
import type { ServiceBreaker } from "./breakers.ts";
import { LocalGovernor, type Governor } from "./governor.ts";
import { abortedError, systemClock, type Clock } from "./clock.ts";

const MINUTE_MS = 60_000;
/** A server projection older than this is dropped; the local bucket alone governs. */
const SERVER_VIEW_TTL_MS = MINUTE_MS;

/**
 * A continuously refilled bucket on an injected clock. `level` may go negative (an oversized
 * request borrows from the future).
 */
export class TokenBucket {
  #capacity: number;
  #level: number;
  #updatedAt: number;

  private readonly clock: Clock;

  constructor(capacity: number, clock: Clock) {
    this.clock = clock;
    if (!(capacity > 0)) throw new Error(`TokenBucket: capacity must be > 0, got ${capacity}`);
    this.#capacity = capacity;
    this.#level = capacity;
    this.#updatedAt = clock.now();
  }

  get capacity(): number {
    return this.#capacity;
  }

  /** Refill per ms: capacity per minute. */
  get ratePerMs(): number {
    return this.#capacity / MINUTE_MS;
  }

  level(): number {
    this.#refill();
    return this.#level;
  }

  /** Change capacity (and so the rate); the level is kept, capped at the new capacity. */
  setCapacity(capacity: number): void {
    if (!(capacity > 0) || capacity === this.#capacity) return;
    this.#refill();
    this.#capacity = capacity;
    this.#level = Math.min(this.#level, capacity);
  }

  take(n: number): void {
    this.#refill();
    this.#level -= n;
  }

  /** Give back `n` (a reservation that overestimated), never above capacity. */
  give(n: number): void {
    this.#refill();
    this.#level = Math.min(this.#capacity, this.#level + n);
  }

  /** Lower the level to at most `max` (never raises it). */
  clamp(max: number): void {
    this.#refill();
    this.#level = Math.min(this.#level, max);
  }

  /** ms until the level reaches `n` (0 if it already has). */
  msUntil(n: number): number {
    const deficit = n - this.level();
    return deficit <= 0 ? 0 : deficit / this.ratePerMs;
  }

  #refill(): void {
    const now = this.clock.now();
    const elapsed = now - this.#updatedAt;
    if (elapsed > 0) this.#level = Math.min(this.#capacity, this.#level + elapsed * this.ratePerMs);
    this.#updatedAt = now;
  }
}

/** The server's budget as of one answer, projected forward (see the file comment). */
interface ServerView {
  at: number;
  remaining: number;
  limit: number;
  /** Time until the server is back at `limit`; undefined → assume the local refill rate. */
  resetMs: number | undefined;
  /** Sent since (or in flight when) the answer was produced: not in `remaining` yet. */
  unseen: number;
}

/** One dimension (requests or tokens): the local bucket, bounded by the server's view. */
class Budget {
  readonly bucket: TokenBucket;
  #server: ServerView | undefined;

  readonly configuredLimit: number;
  private readonly clock: Clock;

  constructor(configuredLimit: number, clock: Clock) {
    this.configuredLimit = configuredLimit;
    this.clock = clock;
    this.bucket = new TokenBucket(configuredLimit, clock);
  }

  available(): number {
    return Math.min(this.bucket.level(), this.#serverAvailable(this.clock.now()));
  }

  /** ms until `n` is available (`n` is capped at capacity by the caller). */
  msUntil(n: number): number {
    const local = this.bucket.msUntil(n);
    const now = this.clock.now();
    const view = this.#server;
    if (!view || this.#serverAvailable(now) >= n) return local;
    const expiry = view.at + SERVER_VIEW_TTL_MS - now;
    const need = n + view.unseen; // the projection must reach this before `n` is free
    if (need > view.limit) return Math.max(local, expiry);
    const growthPerMs = view.resetMs !== undefined && view.resetMs > 0 ? (view.limit - view.remaining) / view.resetMs : this.bucket.ratePerMs;
    if (view.resetMs === 0 || growthPerMs <= 0) return local;
    const elapsedNeeded = (need - view.remaining) / growthPerMs;
    return Math.max(local, Math.min(expiry, view.at + elapsedNeeded - now));
  }

  take(n: number): void {
    this.bucket.take(n);
    if (this.#server) this.#server.unseen += n;
  }

  /** Undo a `take` for a request that was never sent. */
  refund(n: number): void {
    this.bucket.give(n);
    if (this.#server) this.#server.unseen = Math.max(0, this.#server.unseen - n);
  }

  observe(remaining: number | undefined, limit: number | undefined, resetMs: number | undefined, unseen: number): void {
    if (limit !== undefined && limit > 0) this.bucket.setCapacity(Math.min(this.configuredLimit, limit));
    if (remaining === undefined) return;
    this.#server = { at: this.clock.now(), remaining, limit: limit ?? this.bucket.capacity, resetMs, unseen };
    // The local bucket can never hold more than the server says is left.
    this.bucket.clamp(remaining - unseen);
  }

  #serverAvailable(now: number): number {
    const view = this.#server;
    if (!view) return Infinity;
    const elapsed = now - view.at;
    if (elapsed >= SERVER_VIEW_TTL_MS) {
      this.#server = undefined;
      return Infinity;
    }
    let level: number;
    if (view.resetMs === undefined) level = view.remaining + elapsed * this.bucket.ratePerMs;
    else if (elapsed >= view.resetMs) level = view.limit;
    else level = view.remaining + ((view.limit - view.remaining) * elapsed) / view.resetMs;
    return Math.min(view.limit, level) - view.unseen;
  }
}

export interface RateLimiterOptions {
  requestsPerMinute: number;
  tokensPerMinute: number;
  clock?: Clock;
  /** Pause after a 429 that named no wait. Default 1000 ms. */
  defaultPauseMs?: number;
}

/** A granted share of the budget; hand it back with `settle` (success) or `release` (failure). */
export interface Reservation {
  readonly seq: number;
  readonly tokens: number;
}

export interface RateLimiterSnapshot {
  requestsAvailable: number;
  tokensAvailable: number;
  /** ms until a 429 pause ends (0 when not paused). */
  pausedForMs: number;
  /** Callers waiting for budget. */
  waiting: number;
  /** Requests granted and not yet settled or released. */
  inFlight: number;
}

/**
 * The OpenAI budgets of this process. See the file comment for the model.
 *
 * @example
 * const limiter = new OpenAIRateLimiter({ requestsPerMinute: 3000, tokensPerMinute: 1_000_000 });
 * const r = await limiter.acquire(tokens, signal);
 * try { const res = await client.embed(batch, signal); limiter.observe(res.rateLimit, r); limiter.settle(r, res.usage.totalTokens); }
 * catch (e) { limiter.release(r); throw e; }
 */
export class OpenAIRateLimiter {
  readonly clock: Clock;
  readonly #requests: Budget;
  readonly #tokens: Budget;
  readonly #defaultPauseMs: number;
  readonly #inFlight = new Map<number, number>();
  #seq = 0;
  #lastObservedSeq = -1;
  #pausedUntil = 0;
  #turn: Promise<void> = Promise.resolve();
  #waiting = 0;

  constructor(options: RateLimiterOptions) {
    if (!(options.requestsPerMinute > 0) || !(options.tokensPerMinute > 0)) {
      throw new Error("OpenAIRateLimiter: requestsPerMinute and tokensPerMinute must be > 0");
    }
    this.clock = options.clock ?? systemClock;
    this.#requests = new Budget(options.requestsPerMinute, this.clock);
    this.#tokens = new Budget(options.tokensPerMinute, this.clock);
    this.#defaultPauseMs = options.defaultPauseMs ?? 1000;
  }

  /**
   * Wait until one request and `tokens` tokens fit (and no 429 pause is on), then take them.
   * First come, first served. Rejects with a transient `aborted` error if `signal` aborts.
   */
  async acquire(tokens: number, signal?: AbortSignal): Promise<Reservation> {
    if (signal?.aborted) throw abortedError(signal, "rate-limit wait");
    const previous = this.#turn;
    let done!: () => void;
    this.#turn = new Promise<void>((resolve) => (done = resolve));
    this.#waiting++;
    try {
      await untilOrAbort(previous, signal);
      for (;;) {
        const wait = this.#msUntilFits(tokens);
        if (wait <= 0) break;
        // Whole milliseconds: a sub-ms wait can vanish in floating point at epoch-sized `now`,
        // and a loop that never advances time would spin.
        await this.clock.sleep(Math.max(1, Math.ceil(wait)), signal);
      }
      this.#requests.take(1);
      this.#tokens.take(tokens);
      const reservation: Reservation = { seq: this.#seq++, tokens };
      this.#inFlight.set(reservation.seq, tokens);
      return reservation;
    } finally {
      this.#waiting--;
      // An aborted waiter must not let the one behind it overtake the one ahead of it.
      void previous.then(done);
    }
  }

  /**
   * Follow the `x-ratelimit-*` headers of the answer to `reservation`. Answers arriving out of
   * order are ignored when a later request's answer was already seen.
   */
  observe(info: RateLimitInfo | undefined, reservation: Reservation): void {
    if (!info || reservation.seq < this.#lastObservedSeq) return;
    this.#lastObservedSeq = reservation.seq;
    let unseenRequests = 0;
    let unseenTokens = 0;
    for (const [seq, tokens] of this.#inFlight) {
      if (seq > reservation.seq) {
        unseenRequests += 1;
        unseenTokens += tokens;
      }
    }
    this.#requests.observe(info.remainingRequests, info.limitRequests, info.resetRequestsMs, unseenRequests);
    this.#tokens.observe(info.remainingTokens, info.limitTokens, info.resetTokensMs, unseenTokens);
  }

  /** The request succeeded; `actualTokens` (the answer's usage) corrects the estimate. */
  settle(reservation: Reservation, actualTokens?: number): void {
    if (!this.#inFlight.delete(reservation.seq)) return;
    if (actualTokens === undefined || actualTokens === reservation.tokens) return;
    if (actualTokens < reservation.tokens) this.#tokens.bucket.give(reservation.tokens - actualTokens);
    else this.#tokens.bucket.take(actualTokens - reservation.tokens);
  }

  /**
   * The request failed. By default nothing is refunded: we cannot tell whether the server
   * counted it, and erring towards "counted" costs a little throughput where the other way
   * costs 429s. Pass `notSent: true` when it certainly never left (open circuit, aborted
   * before sending) to give the budget back.
   */
  release(reservation: Reservation, { notSent = false }: { notSent?: boolean } = {}): void {
    if (!this.#inFlight.delete(reservation.seq)) return;
    if (notSent) {
      this.#requests.refund(1);
      this.#tokens.refund(reservation.tokens);
    }
  }

  /** Stop every caller for `ms` (a 429's `retryAfterMs`, or the default when it named none). */
  pause(ms: number | undefined): void {
    const until = this.clock.now() + Math.max(0, ms ?? this.#defaultPauseMs);
    this.#pausedUntil = Math.max(this.#pausedUntil, until);
  }

  snapshot(): RateLimiterSnapshot {
    return {
      requestsAvailable: this.#requests.available(),
      tokensAvailable: this.#tokens.available(),
      pausedForMs: Math.max(0, this.#pausedUntil - this.clock.now()),
      waiting: this.#waiting,
      inFlight: this.#inFlight.size,
    };
  }

  #msUntilFits(tokens: number): number {
    const paused = this.#pausedUntil - this.clock.now();
    if (paused > 0) return paused;
    const tokenNeed = Math.min(tokens, this.#tokens.bucket.capacity);
    return Math.max(this.#requests.msUntil(1), this.#tokens.msUntil(tokenNeed));
  }
}

function untilOrAbort(promise: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return promise;
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(abortedError(signal, "rate-limit wait"));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, reject);
  });
}

export interface RateLimitedEmbedderOptions {
  client: EmbeddingsClient;
  /** The fleet's shared governor, or this process's own bucket. */
  limiter: Governor | OpenAIRateLimiter;
  /** Optional breaker around the call itself (waiting for budget happens outside it). */
  breaker?: ServiceBreaker | undefined;
  /** Token estimate for a batch; defaults to cl100k_base counting (what OpenAI bills). */
  countTokens?: ((inputs: readonly string[]) => number) | undefined;
  /**
   * How many times a 429 `rate_limit_exceeded` is retried here, after the pause, before it is
   * thrown to the worker. Default 0: the worker's job-level backoff is the one retry policy.
   * A 429 never counts against the breaker either way.
   */
  rateLimitRetries?: number | undefined;
}

/**
 * An `EmbeddingsClient` that spends from the limiter before every call, follows the answer's
 * headers, and on a 429 pauses every caller for the time the server asked.
 *
 * @example
 * const embedder = new RateLimitedEmbedder({ client: createEmbeddingsClient(cfg), limiter, breaker: breakers.openai });
 * const { vectors } = await embedder.embed(batch, signal);
 */
export class RateLimitedEmbedder implements EmbeddingsClient {
  readonly #client: EmbeddingsClient;
  readonly #governor: Governor;
  readonly #breaker: ServiceBreaker | undefined;
  readonly #count: (inputs: readonly string[]) => number;
  readonly #rateLimitRetries: number;

  constructor(options: RateLimitedEmbedderOptions) {
    this.#client = options.client;
    this.#governor = options.limiter instanceof OpenAIRateLimiter ? new LocalGovernor(options.limiter) : options.limiter;
    this.#breaker = options.breaker;
    this.#count = options.countTokens ?? countBatchTokens;
    this.#rateLimitRetries = options.rateLimitRetries ?? 0;
  }

  get model(): string {
    return this.#client.model;
  }

  get dimensions(): number | undefined {
    return this.#client.dimensions;
  }

  async embed(inputs: string[], signal?: AbortSignal, options: { target?: EmbedTarget } = {}): Promise<EmbedResult> {
    const tokens = this.#count(inputs);
    for (let attempt = 0; ; attempt++) {
      const grant = await this.#governor.acquire({ requests: 1, tokens }, signal);
      let result: EmbedResult;
      try {
        result = this.#breaker
          ? await this.#breaker.execute((s) => this.#client.embed(inputs, s, { target: options.target }), signal)
          : await this.#client.embed(inputs, signal, { target: options.target });
      } catch (err) {
        const e = coerceError(err);
        const rateLimited = e.status === 429 && e.transient;
        // An open circuit rejected the call before anything was sent: give the budget back, or
        // every fast failure during an outage would drain it for when the service returns.
        await this.#governor.fail(grant, { notSent: e.code === "circuit_open", rateLimited, retryAfterMs: e.retryAfterMs });
        if (rateLimited && attempt < this.#rateLimitRetries) continue;
        throw e;
      }
      await this.#governor.settle(grant, { usedTokens: result.usage.totalTokens, rateLimit: result.rateLimit });
      return result;
    }
  }
}
