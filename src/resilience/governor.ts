/**
 * The rate governor: one RPM/TPM budget per (provider, key, model) for the whole fleet.
 *
 * `SharedGovernor` keeps the budget in Postgres (`rate_budgets`, `rate_reservations`, migration
 * 0006; statements in `governorQueries.ts`). Per call: one statement before it (reserve the
 * batch's cl100k count; the answer says when this caller may send, so callers in every process
 * queue first come, first served), the HTTP call with no lock held, and one short transaction
 * after it (settle with the answer's `usage`, follow its `x-ratelimit-*` headers or a 429's
 * retry-after, so every process slows down when one is told to). A crashed worker's reservation stays spent
 * (it may have been sent) and expires from the in-flight count after `ttlMs`.
 *
 * If the budget rows are unreachable (Postgres down, failover), the governor logs a warning and
 * paces with `fallback` (the process's own `OpenAIRateLimiter`, today's per-process bucket that
 * follows the headers) for `offlineMs`, then tries the database again.
 *
 * `LocalGovernor` adapts the per-process `OpenAIRateLimiter` to the same interface: the fallback,
 * and `RATE_GOVERNOR=local`.
 */
import { createHash } from "node:crypto";
import type { RateLimitInfo } from "../clients/openai.ts";
import { coerceError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type pg from "pg";
import { systemClock, type Clock } from "./clock.ts";
import { reserve, settle } from "./governorQueries.ts";
import type { OpenAIRateLimiter, Reservation } from "./rateLimiter.ts";

export interface GovernorCost {
  requests: number;
  tokens: number;
}

/** What a call was granted; hand it back with `settle` (answered) or `fail`. */
export type Grant =
  | { readonly kind: "shared"; readonly reservationId: string; readonly cost: GovernorCost }
  | { readonly kind: "local"; readonly reservation: Reservation; readonly cost: GovernorCost };

export interface CallFailure {
  /** Certainly never sent (open circuit, aborted before sending): the budget is given back. */
  notSent?: boolean | undefined;
  /** The server said 429: every caller waits `retryAfterMs` (or `defaultPauseMs`). */
  rateLimited?: boolean | undefined;
  retryAfterMs?: number | undefined;
  rateLimit?: RateLimitInfo | undefined;
}

export interface Governor {
  /** Wait until the cost fits (and no 429 pause is on), then take it. */
  acquire(cost: GovernorCost, signal?: AbortSignal): Promise<Grant>;
  /** The call answered: correct the estimate with `usedTokens`, follow the headers. Idempotent. */
  settle(grant: Grant, answer: { usedTokens?: number | undefined; rateLimit?: RateLimitInfo | undefined }): Promise<void>;
  /** The call failed. Idempotent. */
  fail(grant: Grant, failure: CallFailure): Promise<void>;
}

/** Pause after a 429 that named no wait. */
const DEFAULT_PAUSE_MS = 1000;

/** The per-process bucket behind the `Governor` interface. */
export class LocalGovernor implements Governor {
  readonly limiter: OpenAIRateLimiter;

  constructor(limiter: OpenAIRateLimiter) {
    this.limiter = limiter;
  }

  async acquire(cost: GovernorCost, signal?: AbortSignal): Promise<Grant> {
    return { kind: "local", reservation: await this.limiter.acquire(cost.tokens, signal), cost };
  }

  async settle(grant: Grant, answer: { usedTokens?: number | undefined; rateLimit?: RateLimitInfo | undefined }): Promise<void> {
    if (grant.kind !== "local") return;
    this.limiter.observe(answer.rateLimit, grant.reservation);
    this.limiter.settle(grant.reservation, answer.usedTokens);
  }

  async fail(grant: Grant, failure: CallFailure): Promise<void> {
    if (grant.kind !== "local") return;
    this.limiter.release(grant.reservation, { notSent: failure.notSent ?? false });
    if (failure.rateLimited) this.limiter.pause(failure.retryAfterMs);
  }
}

export interface SharedGovernorOptions {
  db: pg.Pool;
  /** `budgetKey(provider, apiKey, model)`. */
  budgetKey: string;
  /** Names the reservations' holder (the worker id). */
  holder: string;
  /** The deployment's ceiling (OPENAI_RPM/OPENAI_TPM); the key's reported limits may lower it. */
  ceiling: { rpm: number; tpm: number };
  fallback: LocalGovernor;
  log: Logger;
  /** How long an unsettled reservation counts as in flight. Default 120 s (two request timeouts). */
  ttlMs?: number;
  /** How long to pace locally after the database failed, before trying it again. Default 10 s. */
  offlineMs?: number;
  clock?: Clock;
  /** Simulated database time for tests; omitted → the database's `now()`. */
  dbNow?: () => Date;
}

export class SharedGovernor implements Governor {
  readonly #o: Required<Omit<SharedGovernorOptions, "dbNow">> & Pick<SharedGovernorOptions, "dbNow">;
  #offlineUntil = 0;
  /** The latest 429 pause this process heard of: grants already scheduled wait for it too. */
  #pausedUntil = 0;

  constructor(options: SharedGovernorOptions) {
    this.#o = { ttlMs: 120_000, offlineMs: 10_000, clock: systemClock, ...options };
  }

  /** Whether the last statement failed and the process paces on its own for now. */
  get offline(): boolean {
    return this.#o.clock.now() < this.#offlineUntil;
  }

  async acquire(cost: GovernorCost, signal?: AbortSignal): Promise<Grant> {
    const o = this.#o;
    if (!this.offline) {
      let granted: { reservationId: string; waitMs: number } | undefined;
      try {
        granted = await reserve(o.db, {
          budgetKey: o.budgetKey,
          holder: o.holder,
          requests: cost.requests,
          tokens: cost.tokens,
          ceiling: o.ceiling,
          ttlMs: o.ttlMs,
          now: o.dbNow?.(),
        });
      } catch (err) {
        this.#goOffline(err);
      }
      if (granted) {
        const grant: Grant = { kind: "shared", reservationId: granted.reservationId, cost };
        try {
          await o.clock.sleep(Math.ceil(granted.waitMs), signal);
          await o.clock.sleep(this.#pausedUntil - o.clock.now(), signal);
        } catch (err) {
          await this.fail(grant, { notSent: true });
          throw err;
        }
        return grant;
      }
    }
    return o.fallback.acquire(cost, signal);
  }

  async settle(grant: Grant, answer: { usedTokens?: number | undefined; rateLimit?: RateLimitInfo | undefined }): Promise<void> {
    if (grant.kind === "local") return this.#o.fallback.settle(grant, answer);
    await this.#settle(grant, { tokens: answer.usedTokens, ...headers(answer.rateLimit) });
  }

  async fail(grant: Grant, failure: CallFailure): Promise<void> {
    if (grant.kind === "local") return this.#o.fallback.fail(grant, failure);
    await this.#settle(grant, {
      notSent: failure.notSent,
      ...headers(failure.rateLimit),
      pauseMs: failure.rateLimited ? (failure.retryAfterMs ?? DEFAULT_PAUSE_MS) : undefined,
    });
  }

  async #settle(grant: Extract<Grant, { kind: "shared" }>, fields: Omit<Parameters<typeof settle>[1], "reservationId" | "ceiling" | "now">): Promise<void> {
    try {
      await settle(this.#o.db, { reservationId: grant.reservationId, ceiling: this.#o.ceiling, now: this.#o.dbNow?.(), ...fields });
    } catch (err) {
      // The reservation stays spent and expires; nothing else depends on this statement.
      this.#o.log.warn({ budget: this.#o.budgetKey, err: coerceError(err).message }, "rate governor: could not settle a reservation; it will expire");
    }
    if (fields.pauseMs !== undefined) this.#pausedUntil = Math.max(this.#pausedUntil, this.#o.clock.now() + fields.pauseMs);
  }

  #goOffline(err: unknown): void {
    const wasOnline = !this.offline;
    this.#offlineUntil = this.#o.clock.now() + this.#o.offlineMs;
    if (wasOnline) {
      this.#o.log.warn(
        { budget: this.#o.budgetKey, err: coerceError(err).message, retry_in_ms: this.#o.offlineMs },
        "rate governor: the shared budget is unreachable; pacing with this process's own bucket (the fleet may exceed the limit until it is back)",
      );
    }
  }
}

function headers(info: RateLimitInfo | undefined) {
  return {
    remainingRequests: info?.remainingRequests,
    remainingTokens: info?.remainingTokens,
    limitRequests: info?.limitRequests,
    limitTokens: info?.limitTokens,
  };
}

/**
 * The budget's name: provider, a fingerprint of the key (never the key: the table is readable by
 * operators), and the model. Every process using one key for one model shares one budget.
 */
export function budgetKey(provider: string, apiKey: string, model: string): string {
  return `${provider}:${createHash("sha256").update(apiKey).digest("hex").slice(0, 16)}:${model}`;
}
