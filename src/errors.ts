/**
 * The few errors the pipeline raises. Every error the worker sees is coerced into a
 * `PipelineError`, whose `errorClass` is what the retry policy reads:
 *
 * - `transient`: the same call may succeed later (network, timeout, 429, 5xx, open breaker).
 *   The job is retried with capped exponential backoff until `max_attempts`.
 * - `permanent`: retrying cannot help (bad input, 4xx other than 429, corrupt content).
 *   The job goes to its `failed_*` state at once.
 *
 * `code` is stable and machine-readable; `message` is for people and never carries secrets.
 */
export type ErrorClass = "transient" | "permanent";

export class PipelineError extends Error {
  readonly code: string;
  readonly errorClass: ErrorClass;
  /** HTTP status of the upstream answer, when the error came from one. */
  readonly status: number | undefined;
  /** How long the upstream asked us to wait before trying again (ms), when it said. */
  readonly retryAfterMs: number | undefined;

  constructor(code: string, errorClass: ErrorClass, message: string, options: { cause?: unknown; status?: number; retryAfterMs?: number } = {}) {
    super(message, { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.errorClass = errorClass;
    this.status = options.status;
    this.retryAfterMs = options.retryAfterMs;
  }

  get transient(): boolean {
    return this.errorClass === "transient";
  }
}

/** Retrying may help: timeouts, resets, 429, 5xx, an open circuit. */
export class TransientError extends PipelineError {
  constructor(code: string, message: string, options?: ConstructorParameters<typeof PipelineError>[3]) {
    super(code, "transient", message, options);
  }
}

/** Retrying cannot help: invalid or corrupt input, a 4xx other than 429. */
export class PermanentError extends PipelineError {
  constructor(code: string, message: string, options?: ConstructorParameters<typeof PipelineError>[3]) {
    super(code, "permanent", message, options);
  }
}

/**
 * A fenced write found the job no longer ours (lease lost, taken over, or moved on). Not a job
 * failure: the worker abandons the job without touching it, since someone else now owns it.
 */
export class LeaseLostError extends PipelineError {
  constructor(jobId: string) {
    super("lease_lost", "transient", `lease on job ${jobId} was lost; another worker owns it now`);
  }
}

/**
 * What a service's condition, not the job, is to blame for: the service's circuit is open, it
 * failed while the circuit is open (an outage), it still answered 429 after the caller's own
 * pauses, or it refuses the account (a wrong key, no quota or credits, a missing bucket). The
 * worker parks the job until `retryAfterMs` (when the breaker lets a probe through) without
 * spending an attempt: a three-minute outage must not dead-letter good documents. The `code`,
 * `status` and `retryAfterMs` are the underlying answer's (or `circuit_open`).
 */
export type ServiceCondition = "circuit_open" | "outage" | "rate_limited" | "refusing";

export class ServiceConditionError extends TransientError {
  readonly service: string;
  readonly condition: ServiceCondition;

  constructor(
    service: string,
    condition: ServiceCondition,
    message: string,
    options: { code: string; cause?: unknown; status?: number | undefined; retryAfterMs?: number | undefined },
  ) {
    super(options.code, message, {
      cause: options.cause,
      ...(options.status !== undefined ? { status: options.status } : {}),
      ...(options.retryAfterMs !== undefined ? { retryAfterMs: options.retryAfterMs } : {}),
    });
    this.service = service;
    this.condition = condition;
  }
}

/**
 * The worker is shutting down: the stage stopped between steps (or was aborted when the
 * shutdown timeout ran out). Not the job's fault: the job is released at once, no attempt spent.
 */
export class WorkerStoppingError extends PipelineError {
  constructor() {
    super("worker_stopping", "transient", "the worker is shutting down; the job goes back to the queue");
  }
}

/**
 * A stage made no progress (no transition, no committed batch) within the stage deadline: a
 * call or query that never answers. The stage is aborted, the lease given up, and the job
 * retried (by any worker) after backoff; it spends an attempt like any transient failure.
 */
export class StageStalledError extends PipelineError {
  constructor(stage: string, ms: number) {
    super("stage_stalled", "transient", `stage ${stage} made no progress for ${ms} ms; aborted and handed back`);
  }
}

/**
 * An unleased writer (webhook handler, operator) found the job no longer in the expected state,
 * or held under a live lease: someone else moved it first. Nothing was written; callers decide
 * whether that is an answer ("not applicable", 409) rather than a failure.
 */
export class TransitionConflict extends PipelineError {
  constructor(jobId: string, from: string) {
    super("transition_conflict", "transient", `job ${jobId} is not in ${from} without a live lease; nothing was written`);
  }
}

/** A transition the state machine table does not allow. A programming error, never retried. */
export class IllegalTransitionError extends PipelineError {
  constructor(from: string | null, to: string) {
    super("illegal_transition", "permanent", `illegal transition ${from ?? "∅"} → ${to}: not in the state machine table`);
  }
}

/** Bad configuration: names every offending variable and what it expects, never its value. */
export class ConfigError extends Error {
  readonly code = "config_invalid";
  readonly problems: string[];

  constructor(problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.problems = problems;
    this.name = "ConfigError";
  }
}

const TRANSIENT_NETWORK_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ETIMEDOUT",
  "EPIPE",
  "EAI_AGAIN",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
  // Postgres: connection lost / admin shutdown / serialization and deadlock retries
  "57P01",
  "57P02",
  "57P03",
  "08000",
  "08003",
  "08006",
  "40001",
  "40P01",
]);

/** Classify an HTTP status the way SPEC §5 does: 408, 409, 429 and 5xx may succeed later. */
export function classifyStatus(status: number): ErrorClass {
  return status === 408 || status === 409 || status === 429 || status >= 500 ? "transient" : "permanent";
}

/**
 * Normalise anything thrown into a `PipelineError` (after graphile-worker's `coerceError`).
 * Unknown errors are treated as transient: a bug that throws will be retried a bounded number
 * of times and then dead-lettered, which is safer than failing a document on a blip.
 */
export function coerceError(err: unknown): PipelineError {
  if (err instanceof PipelineError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  const code = (e as { code?: unknown }).code;
  const status = (e as { status?: unknown }).status;
  if (typeof status === "number") {
    return new PipelineError(`http_${status}`, classifyStatus(status), e.message, { cause: e, status });
  }
  if (typeof code === "string" && TRANSIENT_NETWORK_CODES.has(code)) {
    return new TransientError(code.toLowerCase(), e.message, { cause: e });
  }
  if (e.name === "AbortError" || e.name === "TimeoutError" || e.name === "TaskCancelledError") {
    return new TransientError("timeout", e.message, { cause: e });
  }
  if (e.name === "BrokenCircuitError" || e.name === "IsolatedCircuitError") {
    return new TransientError("circuit_open", e.message, { cause: e });
  }
  return new TransientError("unexpected", e.message, { cause: e });
}
