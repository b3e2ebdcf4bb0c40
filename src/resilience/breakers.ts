/**
 * Per-service circuit breakers and timeouts (SPEC §5 Resilience), on cockatiel v4.
 *
 * One breaker per external service, shared by every job slot of the process: when OpenAI is
 * down, the first few batches fail and the rest fail fast (`circuit_open`, transient, with a
 * `retryAfterMs` the worker can use for `next_attempt_at`) instead of each holding a slot for a
 * full timeout. After `halfOpenAfterMs` one probe call goes through; success closes the circuit,
 * failure reopens it.
 *
 * What counts as a failure: only what says "the service is unwell" — 5xx, timeouts, resets.
 * A 4xx (including `insufficient_quota`) means the service answered; a 429 means it is up and
 * busy, which the rate limiter handles; the caller's own abort (shutdown) says nothing about the
 * service. Counting those would let one poison document or a rate-limit storm open the circuit
 * for everybody.
 *
 * cockatiel v4 behaviour worth knowing: while the probe is in flight (half-open), other callers
 * *wait* for its verdict rather than failing at once, then run (closed) or fail fast (reopened).
 * The wait is bounded by the probe's own timeout.
 */
import {
  BrokenCircuitError,
  CircuitState,
  ConsecutiveBreaker,
  IsolatedCircuitError,
  SamplingBreaker,
  TaskCancelledError,
  TimeoutStrategy,
  circuitBreaker,
  handleWhen,
  timeout,
  type CircuitBreakerPolicy,
} from "cockatiel";
import { ServiceConditionError, TransientError, coerceError, type PipelineError } from "../errors.ts";
import { abortedError } from "./clock.ts";

export const SERVICES = ["openai", "llamaparse", "storage"] as const;
export type ServiceName = (typeof SERVICES)[number];

export type BreakerState = "closed" | "open" | "half_open" | "isolated";

/** Numeric encoding for a Prometheus gauge (`breaker_state{service}`). */
export const BREAKER_STATE_VALUE: Record<BreakerState, number> = { closed: 0, open: 1, half_open: 2, isolated: 3 };

export type BreakerPolicyConfig =
  /** Open after `failures` consecutive failures. Predictable; good at low traffic. */
  | { kind: "consecutive"; failures: number }
  /**
   * Open when at least `threshold` (0..1) of calls failed over the last `durationMs`, once the
   * rate reaches `minimumRps`. Tolerates a noisy service at high traffic.
   */
  | { kind: "sampling"; threshold: number; durationMs: number; minimumRps?: number };

export interface BreakerConfig {
  policy: BreakerPolicyConfig;
  /** How long the circuit stays open before a half-open probe. */
  halfOpenAfterMs: number;
  /**
   * While the service refuses the account (see `ACCOUNT_ERROR_CODES`), one probe call per this
   * interval; every other call fails fast. A key or a quota is fixed by a person, in minutes:
   * probing faster only adds refused calls to the provider's logs.
   */
  refusalProbeMs: number;
  /**
   * No call through the breaker lasts longer: after this the call's signal aborts and the call
   * rejects with a transient `timeout` (a service failure), even if the client ignores the
   * signal. Unset: the client's own timeout only.
   */
  callTimeoutMs?: number | undefined;
}

/**
 * Defaults: five consecutive service failures open the circuit for 10 s. Consecutive rather
 * than sampling because a worker process makes few calls per second per service (one embed
 * batch or parse submission per slot at a time), below any useful sampling minimum.
 */
export const DEFAULT_BREAKER_CONFIG: Readonly<Record<ServiceName, BreakerConfig>> = {
  openai: { policy: { kind: "consecutive", failures: 5 }, halfOpenAfterMs: 10_000, refusalProbeMs: 30_000 },
  llamaparse: { policy: { kind: "consecutive", failures: 5 }, halfOpenAfterMs: 15_000, refusalProbeMs: 30_000 },
  storage: { policy: { kind: "consecutive", failures: 5 }, halfOpenAfterMs: 5_000, refusalProbeMs: 30_000 },
};

/**
 * Answers that say the account, not the request, is refused: a wrong or rotated key, no quota,
 * no credits, a missing bucket. Every document would get the same answer, so they are a
 * condition of the service (the breaker holds every call back and probes slowly; jobs wait)
 * rather than a permanent failure of each document that reaches the stage.
 */
export const ACCOUNT_ERROR_CODES: ReadonlySet<string> = new Set([
  "openai_unauthorized",
  "openai_insufficient_quota",
  "llamaparse_unauthorized",
  "llamaparse_payment_required",
  "storage_unauthorized",
  "storage_bucket_not_found",
]);

/** A service that refuses the account: since when and why (the answer's code and message, never a secret). */
export interface Refusal {
  code: string;
  message: string;
  since: Date;
}

const NOT_A_SERVICE_FAILURE = new Set(["aborted", "circuit_open", "lease_lost"]);

/** Whether `err` says the service itself is unwell (see the file comment). */
export function countsAsServiceFailure(err: unknown): boolean {
  const e = coerceError(err);
  if (!e.transient) return false;
  if (e.status === 429 || e.code.endsWith("_rate_limited")) return false;
  return !NOT_A_SERVICE_FAILURE.has(e.code);
}

function stateName(state: CircuitState): BreakerState {
  switch (state) {
    case CircuitState.Closed:
      return "closed";
    case CircuitState.Open:
      return "open";
    case CircuitState.HalfOpen:
      return "half_open";
    case CircuitState.Isolated:
      return "isolated";
  }
}

/**
 * One service's breaker.
 *
 * @example
 * const breakers = createBreakers();
 * const result = await breakers.openai.execute((signal) => embeddings.embed(batch, signal), jobSignal);
 * metrics.breakerState.set({ service: "openai" }, BREAKER_STATE_VALUE[breakers.openai.state]);
 */
export class ServiceBreaker {
  readonly service: ServiceName;
  readonly config: BreakerConfig;
  readonly #policy: CircuitBreakerPolicy;
  #openedAt = 0;
  /** Service failures in a row seen by this process since its last successful call. */
  #failureStreak = 0;
  #refusal: (Refusal & { nextProbeAt: number; probing: boolean }) | undefined;
  readonly #refusalListeners = new Set<(refusal: Refusal | undefined, service: ServiceName) => void>();

  constructor(service: ServiceName, config: BreakerConfig) {
    this.service = service;
    this.config = config;
    const breaker =
      config.policy.kind === "consecutive"
        ? new ConsecutiveBreaker(config.policy.failures)
        : new SamplingBreaker({
            threshold: config.policy.threshold,
            duration: config.policy.durationMs,
            ...(config.policy.minimumRps !== undefined ? { minimumRps: config.policy.minimumRps } : {}),
          });
    this.#policy = circuitBreaker(handleWhen(countsAsServiceFailure), { breaker, halfOpenAfter: config.halfOpenAfterMs });
    // cockatiel reads Date.now() for the open period; so do we, to report retryAfterMs.
    this.#policy.onBreak(() => {
      this.#openedAt = Date.now();
    });
  }

  /** Current state, for metrics and `/healthz`; `isolated` while the service refuses the account. */
  get state(): BreakerState {
    return this.#refusal ? "isolated" : stateName(this.#policy.state);
  }

  /**
   * Run `fn` through the breaker. Rejects with a `ServiceConditionError` (transient: the worker
   * parks the job without spending an attempt) when the service, not the call, is to blame:
   *
   * - the circuit is open (`circuit_open`, with the time left until the half-open probe);
   * - the call failed like a service failure and the circuit is open after it (`outage`);
   * - the service answered 429 (`rate_limited`);
   * - the service refuses the account, or did at the last probe (`refusing`; see `refusal`).
   *
   * Any other error of `fn` passes through unchanged (coerce it at the call site).
   */
  async execute<T>(fn: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) throw abortedError(signal, `${this.service} call`);
    const probe = this.#takeRefusalProbe();
    try {
      const limit = this.config.callTimeoutMs;
      const result = await this.#policy.execute(({ signal: s }) => (limit === undefined ? fn(s) : withTimeout(limit, fn, s)), signal);
      if (probe) this.#setRefusal(undefined);
      this.#failureStreak = 0;
      return result;
    } catch (err) {
      throw this.#classify(err, probe, signal);
    } finally {
      if (probe && this.#refusal) this.#refusal.probing = false;
    }
  }

  /** While the service refuses us: throws unless a probe is due; true when this call is the probe. */
  #takeRefusalProbe(): boolean {
    const refusal = this.#refusal;
    if (!refusal) return false;
    if (refusal.probing || Date.now() < refusal.nextProbeAt) throw this.#refusingError(refusal);
    refusal.probing = true;
    return true;
  }

  #classify(err: unknown, probe: boolean, signal: AbortSignal | undefined): unknown {
    if (err instanceof BrokenCircuitError || err instanceof IsolatedCircuitError) {
      const retryAfterMs = err instanceof IsolatedCircuitError ? undefined : this.#openFor();
      return new ServiceConditionError(
        this.service,
        "circuit_open",
        `${this.service} circuit is ${this.state}: failing fast after repeated ${this.service} failures`,
        {
          code: "circuit_open",
          cause: err,
          retryAfterMs,
        },
      );
    }
    if (err instanceof TaskCancelledError && signal?.aborted) return abortedError(signal, `${this.service} call`);
    if (err instanceof ServiceConditionError) return err;
    const e = coerceError(err);
    const carry = { code: e.code, cause: e, status: e.status };
    if (ACCOUNT_ERROR_CODES.has(e.code)) {
      this.#setRefusal({ code: e.code, message: e.message, since: this.#refusal?.since ?? new Date() });
      return this.#refusingError(this.#refusal!);
    }
    if (probe) this.#refusal!.nextProbeAt = Date.now() + this.config.refusalProbeMs; // inconclusive: still refusing
    if (e.transient && (e.status === 429 || e.code.endsWith("_rate_limited"))) {
      return new ServiceConditionError(this.service, "rate_limited", e.message, { ...carry, retryAfterMs: e.retryAfterMs });
    }
    // A second service failure in a row is an outage too, while the circuit is still closed:
    // with several worker processes each breaker sees only its share of the failures, and a
    // job retried across processes spent its 5 attempts before any circuit opened (measured:
    // a document dead-lettered in service-outages at the default settings). The first failure
    // after a success still spends an attempt, so a call that fails for this job alone, while
    // others succeed, still reaches the dead letter.
    if (countsAsServiceFailure(e)) this.#failureStreak++;
    if (countsAsServiceFailure(e) && (this.#policy.state !== CircuitState.Closed || this.#failureStreak >= 2)) {
      return new ServiceConditionError(this.service, "outage", `${e.message} (${this.service} circuit is ${this.state})`, {
        ...carry,
        retryAfterMs: this.#policy.state === CircuitState.Closed ? undefined : this.#openFor(),
      });
    }
    return e;
  }

  /** ms until the open circuit lets a probe through. */
  #openFor(): number {
    return Math.max(0, this.#openedAt + this.config.halfOpenAfterMs - Date.now());
  }

  #refusingError(refusal: Refusal & { nextProbeAt: number }): ServiceConditionError {
    return new ServiceConditionError(this.service, "refusing", `${this.service} refuses the account: ${refusal.message}`, {
      code: refusal.code,
      retryAfterMs: Math.max(0, refusal.nextProbeAt - Date.now()),
    });
  }

  #setRefusal(refusal: Refusal | undefined): void {
    const changed = (refusal === undefined) !== (this.#refusal === undefined) || (refusal && refusal.code !== this.#refusal?.code);
    this.#refusal = refusal && { ...refusal, nextProbeAt: Date.now() + this.config.refusalProbeMs, probing: false };
    if (changed) for (const listener of this.#refusalListeners) listener(refusal, this.service);
  }

  /** The account-level refusal in force (undefined when the service accepts us). */
  get refusal(): Refusal | undefined {
    const r = this.#refusal;
    return r && { code: r.code, message: r.message, since: r.since };
  }

  /** Subscribe to the start and end (`undefined`) of a refusal, and to a change of its code. */
  onRefusalChange(listener: (refusal: Refusal | undefined, service: ServiceName) => void): { dispose(): void } {
    this.#refusalListeners.add(listener);
    return { dispose: () => this.#refusalListeners.delete(listener) };
  }

  /** Subscribe to state changes (for logs and the metrics gauge). */
  onStateChange(listener: (state: BreakerState, service: ServiceName) => void): { dispose(): void } {
    return this.#policy.onStateChange((s) => listener(stateName(s), this.service));
  }

  /** Hold the circuit open by hand (operator action, tests) until `dispose()`. */
  isolate(): { dispose(): void } {
    return this.#policy.isolate();
  }

  /** The last failure that counted, for `/healthz`. */
  get lastFailure(): PipelineError | undefined {
    const last = this.#policy.lastFailure;
    return last && "error" in last ? coerceError(last.error) : undefined;
  }
}

export type Breakers = Record<ServiceName, ServiceBreaker>;

/**
 * One breaker per service, with `DEFAULT_BREAKER_CONFIG` overridden per service.
 *
 * @example
 * const breakers = createBreakers({ openai: { halfOpenAfterMs: 30_000 } });
 */
export function createBreakers(overrides: Partial<Record<ServiceName, Partial<BreakerConfig>>> = {}): Breakers {
  const make = (s: ServiceName) => new ServiceBreaker(s, { ...DEFAULT_BREAKER_CONFIG[s], ...overrides[s] });
  return { openai: make("openai"), llamaparse: make("llamaparse"), storage: make("storage") };
}

/** A snapshot of every breaker's state, e.g. `{ openai: "open", llamaparse: "closed", storage: "closed" }`. */
export function breakerStates(breakers: Breakers): Record<ServiceName, BreakerState> {
  return { openai: breakers.openai.state, llamaparse: breakers.llamaparse.state, storage: breakers.storage.state };
}

/**
 * Run `fn` with a deadline (cockatiel `timeout`, aggressive): after `ms` the signal handed to
 * `fn` aborts and the promise rejects with a transient `timeout` error even if `fn` ignores the
 * signal. If the caller's `signal` aborts first, it rejects with `aborted` instead, so a
 * shutdown is not mistaken for a slow service (and does not count against the breaker).
 *
 * @example
 * const markdown = await withTimeout(30_000, (signal) => storage.downloadBytes(path, signal), jobSignal);
 */
export async function withTimeout<T>(ms: number, fn: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
  if (signal?.aborted) throw abortedError(signal);
  try {
    return await timeout(ms, TimeoutStrategy.Aggressive).execute(({ signal: s }) => fn(s), signal);
  } catch (err) {
    if (err instanceof TaskCancelledError) {
      if (signal?.aborted) throw abortedError(signal);
      throw new TransientError("timeout", `operation timed out after ${ms} ms`, { cause: err });
    }
    throw err;
  }
}
