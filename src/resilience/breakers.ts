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
import { TransientError, coerceError, type PipelineError } from "../errors.ts";
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
}

/**
 * Defaults: five consecutive service failures open the circuit for 10 s. Consecutive rather
 * than sampling because a worker process makes few calls per second per service (one embed
 * batch or parse submission per slot at a time), below any useful sampling minimum.
 */
export const DEFAULT_BREAKER_CONFIG: Readonly<Record<ServiceName, BreakerConfig>> = {
  openai: { policy: { kind: "consecutive", failures: 5 }, halfOpenAfterMs: 10_000 },
  llamaparse: { policy: { kind: "consecutive", failures: 5 }, halfOpenAfterMs: 15_000 },
  storage: { policy: { kind: "consecutive", failures: 5 }, halfOpenAfterMs: 5_000 },
};

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

  /** Current state, for metrics and `/healthz`. */
  get state(): BreakerState {
    return stateName(this.#policy.state);
  }

  /**
   * Run `fn` through the breaker. Rejects with a transient `circuit_open` `PipelineError` while
   * the circuit is open; `fn`'s own errors pass through unchanged (coerce them at the call site).
   */
  async execute<T>(fn: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) throw abortedError(signal, `${this.service} call`);
    try {
      return await this.#policy.execute(({ signal: s }) => fn(s), signal);
    } catch (err) {
      if (err instanceof BrokenCircuitError || err instanceof IsolatedCircuitError) {
        const retryAfterMs = err instanceof IsolatedCircuitError ? undefined : Math.max(0, this.#openedAt + this.config.halfOpenAfterMs - Date.now());
        throw new TransientError("circuit_open", `${this.service} circuit is ${this.state}: failing fast after repeated ${this.service} failures`, {
          cause: err,
          ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
        });
      }
      if (err instanceof TaskCancelledError && signal?.aborted) throw abortedError(signal, `${this.service} call`);
      throw err;
    }
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
