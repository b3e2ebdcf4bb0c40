/**
 * The one interface every stage implements. A stage handles one or more states, does its work
 * with what the context gives it, and moves the job with `ctx.transition` (each move fenced by
 * the lease). It may be interrupted anywhere (crash, lease loss, shutdown) and must resume from
 * what the database already holds when the job is claimed again.
 */
import type pg from "pg";
import type { Logger } from "../logger.ts";
import type { JobStatus, PipelineState } from "../state-machine/table.ts";
import type { TransitionRequest } from "../state-machine/transition.ts";
import type { FaultPoints } from "./faultPoints.ts";
import type { ClaimedJob } from "./queries.ts";

export type TransitionOptions = Omit<TransitionRequest, "jobId" | "from" | "to" | "actor" | "fence" | "now">;

/** What a stage may pass to `ctx.transition`: the request's options, and who moves the job. */
export type StageTransitionOptions = TransitionOptions & { actor?: "worker" | "reconciler" };

export interface StageContext<Services> {
  /** The claimed job; `status` follows every transition this context makes. */
  readonly job: ClaimedJob;
  readonly workerId: string;
  readonly pool: pg.Pool;
  readonly services: Services;
  /** Carries correlation_id, job_id, stage and worker_id. */
  readonly log: Logger;
  /** Aborted when the lease is lost or shutdown runs out of patience: stop and throw. */
  readonly signal: AbortSignal;
  readonly faults: FaultPoints;
  /** The worker's clock (simulated in tests); `undefined` means the database's `now()`. */
  now(): Date | undefined;
  /**
   * Throw if the stage should stop before its next step: the lease is lost (the signal's
   * reason) or the worker is shutting down (`WorkerStoppingError`: the job goes back to the
   * queue with no attempt spent). Loops call it between batches.
   */
  checkpoint(): void;
  /**
   * Confirm, right before an external call with side effects (a billed parse or embedding), that
   * the lease is still ours and unexpired; throws `LeaseLostError` otherwise. A worker frozen
   * past its lease (GC pause, SIGSTOP, VM migration) thus does not send what its successor sends.
   */
  checkLease(): Promise<void>;
  /** Counters the stage keeps for its "stage finished" log line (e.g. `batches`, `inputs`). */
  readonly counts: Record<string, number>;
  /** Move this job (fenced by our lease, with its event, in one statement). */
  transition(to: JobStatus, options?: StageTransitionOptions): Promise<void>;
  /**
   * Run `fn` in a transaction that first locks the job row and checks our lease token: the
   * fenced way to write several rows at once (a batch of vectors and its progress counters).
   * Throws `LeaseLostError` (and rolls back) when the lease is no longer ours.
   */
  fenced<T>(fn: (tx: FencedTransaction) => Promise<T>): Promise<T>;
}

/** An open transaction holding the job row locked under our lease. */
export interface FencedTransaction {
  client: pg.PoolClient;
  /** The same fenced move as `ctx.transition`, inside this transaction. */
  transition(to: JobStatus, options?: StageTransitionOptions): Promise<void>;
}

/** What a stage asks of the worker when it returns. */
export type StageOutcome =
  /** Carry on with whatever stage the job's new state routes to (the default). */
  | { next: "continue" }
  /** Nothing to do yet (waiting on LlamaParse): release the lease, come back after `delayMs`, no attempt spent. */
  | { next: "snooze"; delayMs: number; reason: string };

export interface Stage<Services> {
  /** Used in logs, fault point names and metrics: `stage.<name>.before`. */
  readonly name: string;
  /** The states this stage acts on; each actionable state is routed to exactly one stage. */
  readonly handles: readonly PipelineState[];
  run(ctx: StageContext<Services>): Promise<StageOutcome | void>;
}
