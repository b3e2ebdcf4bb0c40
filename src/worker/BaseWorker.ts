/**
 * The worker: N slots, each a loop of `claim → run stages → release`, sharing one pool.
 *
 *   while (!stopping) { job = claimNextJob() ?? await idle(); work(job) }
 *
 * How a run ends (`JobRunOutcome`), and what it costs the job:
 * - a stage failure attributable to the job spends an attempt (`retry` with backoff; `failed`
 *   once `max_attempts` are spent, or at once for a permanent error);
 * - a service's condition (`ServiceConditionError`: open circuit, outage, 429, refused account)
 *   `parked`: released until the breaker lets a probe through, attempt refunded;
 * - a shutdown (`WorkerStoppingError`) `released` at once, attempt refunded;
 * - no progress within `stageDeadlineMs`: `stalled`, the stage aborted and the lease handed
 *   back with backoff (an attempt, like any transient failure);
 * - a claim that ends with nothing recorded (the process died) keeps its attempt: a job whose
 *   workers keep dying is dead-lettered instead of crash-looping.
 *
 * A notification (LISTEN upload_pipeline_jobs) wakes one idle slot, `stop()` wakes them all; polling with
 * backoff is the fallback when notifications are lost (Postgres restarts, pooled connections).
 */
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import pg from "pg";
import { coerceError, LeaseLostError, PipelineError, ServiceConditionError, StageStalledError, WorkerStoppingError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { Clock } from "../resilience/clock.ts";
import { ACTIONABLE_STATES, FAILURE_OF, isTerminal, type JobStatus, type PipelineState } from "../state-machine/table.ts";
import { withTransaction } from "../db/transaction.ts";
import { transition, type MovedJob, type Queryable } from "../state-machine/transition.ts";
import { backoffDelayMs } from "./backoff.ts";
import { NO_FAULTS, SimulatedCrash, type FaultPoints } from "./faultPoints.ts";
import { traceSettlement, traceStage } from "../tracing.ts";
import { reapDeadWorkers, registerWorker, unregisterWorker } from "./liveness.ts";
import { IdleSlots } from "./idleSlots.ts";
import { claimNextJob, heartbeat, leaseRemainingMs, lockLeasedJob, releaseJob, type ClaimedJob } from "./queries.ts";
import type { Stage, StageContext, StageOutcome, StageTransitionOptions } from "./stage.ts";

/** How one claimed run of a job ended (the `outcome` label of `worker_job_runs_total`). */
export type JobRunOutcome = "released" | "retry" | "parked" | "failed" | "terminal" | "snoozed" | "lost" | "crashed" | "stalled";

export interface WorkerOptions<Services> {
  pool: pg.Pool;
  /** Connection string for the LISTEN connection (a pool connection can't hold a LISTEN). */
  databaseUrl?: string | undefined;
  stages: readonly Stage<Services>[];
  services: Services;
  log: Logger;
  workerId?: string | undefined;
  concurrency: number;
  leaseSeconds: number;
  retryBaseMs: number;
  retryMaxMs: number;
  pollIntervalMs: number;
  shutdownTimeoutMs?: number;
  /**
   * A stage that makes no progress (no transition, no committed batch) for this long is aborted
   * and its lease handed back; unset: no deadline (tests that step by hand).
   */
  stageDeadlineMs?: number | undefined;
  faults?: FaultPoints;
  /** Simulated clock for tests (`ManualClock`); omitted → the database's `now()`. */
  clock?: Clock;
  random?: () => number;
  /** Called after each job run, for tests and the scenario runner's spies. */
  onJobDone?: (event: { jobId: string; status: JobStatus; outcome: JobRunOutcome }) => void;
  /** Called after each stage that moved its job (the process's heap trim, `heapTrim.ts`). */
  onStageDone?: (event: { stage: string; durationMs: number; log: Logger }) => void;
}

/**
 * How often a worker looks for dead workers' jobs: one short statement over a table with a row per
 * worker process, so a killed worker's jobs wait about 2 s instead of its lease (60 s by default).
 */
const REAP_INTERVAL_MS = 2_000;

/** One claimed run of a job: its abort controller, heartbeat, deadline and log. */
interface JobRun {
  job: ClaimedJob;
  controller: AbortController;
  log: Logger;
  /** A stage's transition already handed the job back to the queue. */
  released: boolean;
  /** Restart the no-progress deadline (a transition, a committed batch). */
  progressed(): void;
  /** Rejects with the abort reason (lease lost, shutdown timeout, stage stalled). */
  interrupted: Promise<never>;
  end(): void;
}

export class BaseWorker<Services> {
  readonly workerId: string;
  private readonly routes = new Map<PipelineState, Stage<Services>>();
  private stopping = false;
  private slots: Promise<void>[] = [];
  private listener: pg.Client | undefined;
  private readonly idleSlots = new IdleSlots();
  private readonly active = new Map<string, AbortController>();
  private reaper: NodeJS.Timeout | undefined;

  private readonly opts: WorkerOptions<Services>;
  /** The time every statement passes as `$now`: the test's clock, or undefined for the database's `now()`. */
  private readonly now: () => Date | undefined;

  constructor(opts: WorkerOptions<Services>) {
    this.opts = opts;
    const clock = opts.clock;
    this.now = clock ? () => new Date(clock.now()) : () => undefined;
    this.workerId = opts.workerId ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
    for (const stage of opts.stages) {
      for (const state of stage.handles) {
        if (this.routes.has(state)) throw new Error(`state ${state} is routed to two stages`);
        this.routes.set(state, stage);
      }
    }
  }

  /** Start the slots (and the LISTEN connection). Returns at once. */
  async start(): Promise<void> {
    await this.listen();
    this.opts.log.info({ worker_id: this.workerId, concurrency: this.opts.concurrency }, "worker started");
    this.slots = Array.from({ length: this.opts.concurrency }, (_, i) => this.runSlot(i));
    this.reaper = setInterval(() => void this.reap(), REAP_INTERVAL_MS);
  }

  /**
   * Stop claiming; let each running job reach a consistent state (its current stage step) and
   * release its lease. After `shutdownTimeoutMs` running stages are aborted, which releases
   * their leases too. Resolves when every slot has ended.
   */
  async stop(): Promise<void> {
    if (this.stopping) return Promise.all(this.slots).then(() => {});
    this.stopping = true;
    this.opts.log.info({ worker_id: this.workerId, running: this.active.size }, "worker stopping");
    this.idleSlots.wakeAll();
    const timer = setTimeout(() => {
      for (const ctl of this.active.values()) ctl.abort(new WorkerStoppingError());
    }, this.opts.shutdownTimeoutMs ?? 30_000);
    try {
      await Promise.all(this.slots);
    } finally {
      clearTimeout(timer);
      clearInterval(this.reaper);
      await unregisterWorker(this.opts.pool, this.workerId).catch(() => {});
      await this.listener?.end().catch(() => {});
    }
    this.opts.log.info({ worker_id: this.workerId }, "worker stopped");
  }

  /** Claim and work one job on the caller's stack (tests and property tests step with it). */
  async runOnce(): Promise<ClaimedJob | undefined> {
    const job = await this.claim();
    if (job) await this.work(job);
    return job;
  }

  private claim(): Promise<ClaimedJob | undefined> {
    return claimNextJob(this.opts.pool, { workerId: this.workerId, leaseSeconds: this.opts.leaseSeconds, now: this.now() });
  }

  private async runSlot(slot: number): Promise<void> {
    let idleMs = 50;
    while (!this.stopping) {
      let job: ClaimedJob | undefined;
      try {
        job = await this.claim();
      } catch (err) {
        // The database is unreachable (restart, failover): back off and try again.
        this.opts.log.warn({ worker_id: this.workerId, slot, err: coerceError(err).message }, "claim failed; retrying");
      }
      if (!job) {
        await this.idle(idleMs);
        idleMs = Math.min(idleMs * 2, this.opts.pollIntervalMs);
        continue;
      }
      idleMs = 50;
      await this.work(job);
    }
  }

  /*
   * Once a job is claimed we MUST either move it, release it, or (only for a simulated crash,
   * or a lost lease) leave it for its lease to expire. `runJob` does the work; whatever it
   * throws, or an interruption (lease lost, shutdown timeout, no progress), is settled by
   * `settleFailure`.
   */
  private async work(job: ClaimedJob): Promise<void> {
    const run = this.startRun(job);
    let outcome: JobRunOutcome;
    try {
      const running = this.runJob(run);
      running.catch(() => {}); // settled below, or abandoned after an interruption
      outcome = await Promise.race([running, run.interrupted]);
    } catch (thrown) {
      outcome = await this.settleFailure(run, thrown);
    } finally {
      run.end();
    }
    this.opts.onJobDone?.({ jobId: job.job_id, status: job.status, outcome });
  }

  private startRun(job: ClaimedJob): JobRun {
    const controller = new AbortController();
    this.active.set(job.job_id, controller);
    const log = this.opts.log.child({ correlation_id: job.correlation_id, job_id: job.job_id, worker_id: this.workerId });
    const beat = setInterval(
      () => {
        heartbeat(this.opts.pool, { jobId: job.job_id, leaseToken: job.lease_token, leaseSeconds: this.opts.leaseSeconds, now: this.now() })
          .then((ours) => ours || controller.abort(new LeaseLostError(job.job_id)))
          .catch((err) => log.warn({ err: coerceError(err).message }, "heartbeat failed"));
      },
      Math.max(250, (this.opts.leaseSeconds * 1000) / 3),
    );
    const deadlineMs = this.opts.stageDeadlineMs;
    let deadline: NodeJS.Timeout | undefined;
    const progressed = () => {
      clearTimeout(deadline);
      if (deadlineMs !== undefined) deadline = setTimeout(() => controller.abort(new StageStalledError(job.status, deadlineMs)), deadlineMs);
    };
    progressed();
    const interrupted = new Promise<never>((_, reject) => {
      controller.signal.addEventListener("abort", () => reject(controller.signal.reason), { once: true });
    });
    interrupted.catch(() => {});
    return {
      job,
      controller,
      log,
      released: false,
      progressed,
      interrupted,
      end: () => {
        clearInterval(beat);
        clearTimeout(deadline);
        this.active.delete(job.job_id);
      },
    };
  }

  /** Run the job's stages and hand it back; what throws is settled by `settleFailure`. */
  private async runJob(run: JobRun): Promise<JobRunOutcome> {
    const { job } = run;
    await this.faults.hit("claim.after", { jobId: job.job_id, status: job.status });
    if (this.stopping) throw new WorkerStoppingError(); // stop() came while the claim was in flight
    if (job.attempts > job.max_attempts) {
      // Every earlier attempt died without recording anything (crashes, lost leases).
      await this.fail(
        run,
        coerceError(new Error(`attempts exhausted: ${job.max_attempts} attempts ended without finishing stage ${job.status}`)),
        "attempts_exhausted",
      );
      return "failed";
    }
    const outcome = await this.runStages(run);
    if (outcome?.next === "snooze") {
      await this.release(run, { delayMs: outcome.delayMs, refundAttempt: true });
      return "snoozed";
    }
    if (isTerminal(job.status)) return "terminal";
    if (run.released) return "released";
    // Stopped between stages (shutdown): the stage it finished was not a failed attempt.
    await this.release(run, { refundAttempt: true });
    return "released";
  }

  /** Run stages while the job stays ours and actionable; stop early when shutting down. */
  private async runStages(run: JobRun): Promise<StageOutcome | void> {
    const { job } = run;
    while (!isTerminal(job.status) && (ACTIONABLE_STATES as readonly string[]).includes(job.status)) {
      const stage = this.routes.get(job.status as PipelineState);
      if (!stage) throw new Error(`no stage handles state ${job.status}`);
      const before = job.status;
      const ctx = this.context(run, run.log.child({ stage: stage.name }));
      const started = performance.now();
      ctx.log.info({ status: before, attempt: job.attempts }, "stage started");
      await this.faults.hit(`stage.${stage.name}.before`, { jobId: job.job_id, status: before });
      const outcome = await traceStage(this.opts.pool, job, stage.name, this.workerId, () => stage.run(ctx));
      await this.faults.hit(`stage.${stage.name}.after`, { jobId: job.job_id, status: job.status });
      const durationMs = Math.round(performance.now() - started);
      if (outcome?.next === "snooze") {
        ctx.log.info({ status: before, duration_ms: durationMs, snooze_ms: outcome.delayMs, reason: outcome.reason, ...ctx.counts }, "stage snoozed");
        return outcome;
      }
      if (job.status === before) throw new Error(`stage ${stage.name} returned without moving job from ${before}`);
      ctx.log.info({ from: before, to: job.status, duration_ms: durationMs, ...ctx.counts }, "stage finished");
      this.opts.onStageDone?.({ stage: stage.name, durationMs, log: ctx.log });
      if (run.released) return; // the stage handed the job back with its last transition
      if (this.stopping) return;
      run.controller.signal.throwIfAborted();
    }
  }

  private context(run: JobRun, log: Logger): StageContext<Services> {
    const { job } = run;
    const fence = { kind: "lease" as const, token: job.lease_token, workerId: this.workerId };
    const pool = this.opts.pool;
    const now = this.now;
    const signal = run.controller.signal;
    /** A fenced move of this job on `db` (the pool, or the open transaction of `fenced`). */
    const move = async (db: Queryable, to: JobStatus, options: StageTransitionOptions = {}) => {
      const { actor = "worker", ...rest } = options;
      const releaseLease = rest.releaseLease ?? isTerminal(to);
      const moved = await transition(db, {
        jobId: job.job_id,
        from: job.status,
        to,
        actor,
        fence,
        // Still ours after the move: this claim is the next stage's first attempt. Handed back:
        // the next claim starts the count.
        setAttempts: releaseLease ? 0 : 1,
        attempt: job.attempts,
        now: now(),
        ...rest,
        releaseLease,
      });
      follow(moved.job);
      run.progressed();
      if (releaseLease) run.released = true;
    };
    /** The job's view follows each move this context makes, and nothing else writes it. */
    const follow = (moved: MovedJob) => Object.assign(job, moved);
    return {
      job,
      workerId: this.workerId,
      pool,
      services: this.opts.services,
      log,
      signal,
      faults: this.faults,
      counts: {},
      now,
      checkLease: async () => {
        const asked = performance.now();
        const left = await leaseRemainingMs(pool, { jobId: job.job_id, leaseToken: job.lease_token, now: now() });
        // Measured on our own clock too: a process frozen while the answer was on its way
        // resumes with a stale "yes".
        if (left === undefined || performance.now() - asked >= left) throw new LeaseLostError(job.job_id);
        signal.throwIfAborted();
      },
      checkpoint: () => {
        signal.throwIfAborted();
        if (this.stopping) throw new WorkerStoppingError();
      },
      transition: (to, options) => move(pool, to, options),
      fenced: async (fn) => {
        const result = await withTransaction(pool, async (client) => {
          if (!(await lockLeasedJob(client, { jobId: job.job_id, leaseToken: job.lease_token }))) throw new LeaseLostError(job.job_id);
          return fn({ client, transition: (to, options) => move(client, to, options) });
        });
        run.progressed();
        return result;
      },
    };
  }

  /**
   * Settle a run that threw or was interrupted: park, release, retry or dead-letter it (see the
   * file comment). If even that cannot be recorded (database down, lease gone), the lease
   * expires and the job is retried from its current state, which every stage tolerates.
   */
  private async settleFailure(run: JobRun, thrown: unknown): Promise<JobRunOutcome> {
    if (thrown instanceof SimulatedCrash) {
      run.log.warn({ point: thrown.point }, "simulated crash: abandoning the job without cleanup");
      return "crashed";
    }
    const { signal } = run.controller;
    const err = signal.aborted && signal.reason instanceof PipelineError ? signal.reason : coerceError(thrown);
    if (err instanceof LeaseLostError) {
      run.log.warn("lease lost; another worker owns the job now");
      return "lost";
    }
    // The failure usually comes with the database itself (a restart, a failover): keep trying to
    // record it while our lease would still hold, rather than leave the job idle for a whole
    // lease (60 s by default; measured: a Postgres restart left 4 of 10 jobs waiting that long).
    // Every attempt is fenced by our token, so a late one after a takeover writes nothing.
    const giveUpAt = Date.now() + this.opts.leaseSeconds * 1000;
    for (let delayMs = 250; ; delayMs = Math.min(delayMs * 2, 4_000)) {
      try {
        return await this.settle(run, err);
      } catch (cleanupErr) {
        const cause = coerceError(cleanupErr);
        if (cause instanceof LeaseLostError || cause.code === "transition_conflict" || Date.now() + delayMs >= giveUpAt) {
          run.log.error({ err: cause.message }, "could not record the failure; leaving the job to its lease");
          return "lost";
        }
        run.log.warn({ err: cause.message, retry_in_ms: delayMs }, "could not record the failure yet; trying again");
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
    }
  }

  private async settle(run: JobRun, err: PipelineError): Promise<JobRunOutcome> {
    const { job, log } = run;
    const stage = job.status;
    if (err instanceof WorkerStoppingError) {
      await this.release(run, { refundAttempt: true });
      log.info({ stage, attempt: job.attempts }, "released for shutdown; no attempt spent");
      return "released";
    }
    if (err instanceof ServiceConditionError) {
      // Back when the breaker lets a probe through, spread over a base delay so parked jobs
      // do not all return in the same instant.
      const delay = (err.retryAfterMs ?? this.opts.retryBaseMs) + Math.floor((this.opts.random ?? Math.random)() * this.opts.retryBaseMs);
      await this.release(run, { delayMs: delay, refundAttempt: true, lastError: this.errorRecord(job, err) });
      await this.traceSettled(run, "parked", err, delay);
      log.info(
        { stage, service: err.service, condition: err.condition, code: err.code, attempt: job.attempts, parked_ms: delay },
        "parked: the service is unavailable; no attempt spent",
      );
      return "parked";
    }
    if (err.errorClass === "permanent" || job.attempts >= job.max_attempts) {
      await this.fail(run, err, err.errorClass === "permanent" ? "permanent" : "attempts_exhausted");
      await this.traceSettled(run, "dead_letter", err);
      return "failed";
    }
    const delay = backoffDelayMs(job.attempts, {
      baseMs: this.opts.retryBaseMs,
      maxMs: this.opts.retryMaxMs,
      random: this.opts.random,
      retryAfterMs: err.retryAfterMs,
    });
    await this.release(run, { delayMs: delay, lastError: this.errorRecord(job, err) });
    await this.traceSettled(run, "retry", err, delay);
    log.warn(
      { stage, err: err.message, code: err.code, attempt: job.attempts, max_attempts: job.max_attempts, retry_in_ms: delay },
      "transient error; will retry",
    );
    return err instanceof StageStalledError ? "stalled" : "retry";
  }

  /** The settlement as a span of the document's trace; a tracing failure changes nothing. */
  private async traceSettled(run: JobRun, outcome: "retry" | "parked" | "dead_letter", err: PipelineError, delayMs?: number): Promise<void> {
    await traceSettlement(this.opts.pool, run.job, this.workerId, { outcome, code: err.code, errorClass: err.errorClass, delayMs }).catch((e: unknown) =>
      run.log.warn({ err: coerceError(e).message }, "could not record the settlement in the trace"),
    );
  }

  /** Hand the job back to the queue under our lease token. */
  private async release(run: JobRun, args: { delayMs?: number; refundAttempt?: boolean; lastError?: Record<string, unknown> }): Promise<void> {
    await releaseJob(this.opts.pool, { jobId: run.job.job_id, leaseToken: run.job.lease_token, now: this.now(), ...args });
  }

  /** Dead letter: move to the failed state of the job's stage, with `last_error`, releasing the lease. */
  private async fail(run: JobRun, err: PipelineError, reason: "permanent" | "attempts_exhausted"): Promise<void> {
    const { job, log } = run;
    const to = FAILURE_OF[job.status as keyof typeof FAILURE_OF];
    const lastError = this.errorRecord(job, err);
    await transition(this.opts.pool, {
      jobId: job.job_id,
      from: job.status,
      to,
      actor: "worker",
      fence: { kind: "lease", token: job.lease_token, workerId: this.workerId },
      lastError,
      releaseLease: true,
      attempt: job.attempts,
      detail: { reason, code: err.code },
      now: this.now(),
    });
    log.error({ stage: job.status, code: err.code, reason, to, attempt: job.attempts }, "dead-lettered");
    job.status = to;
  }

  private errorRecord(job: ClaimedJob, err: PipelineError): Record<string, unknown> {
    return {
      class: err.errorClass,
      code: err.code,
      message: err.message,
      stage: job.status,
      attempt: job.attempts,
      correlation_id: job.correlation_id,
      ...(err.status ? { status: err.status } : {}),
    };
  }

  private get faults(): FaultPoints {
    return this.opts.faults ?? NO_FAULTS;
  }

  /** Hand back the jobs of workers whose process has died (see liveness.ts). */
  private async reap(): Promise<void> {
    try {
      for (const { job_id, locked_by } of await reapDeadWorkers(this.opts.pool)) {
        this.opts.log.info({ worker_id: this.workerId, job_id, dead_worker: locked_by }, "took back a job from a dead worker");
      }
    } catch (err) {
      this.opts.log.warn({ worker_id: this.workerId, err: coerceError(err).message }, "could not check for dead workers");
    }
  }

  private idle(ms: number): Promise<void> {
    if (this.stopping) return Promise.resolve();
    return this.idleSlots.wait(ms);
  }

  private async listen(): Promise<void> {
    if (!this.opts.databaseUrl || this.stopping) return;
    const client = new pg.Client(this.opts.databaseUrl);
    let reconnecting = false;
    const reconnect = () => {
      if (reconnecting) return;
      reconnecting = true;
      this.listener = undefined;
      if (!this.stopping) setTimeout(() => void this.listen().catch(() => reconnect()), 1_000);
    };
    // One notification = one claimable job: wake one idle slot for it, not all of them.
    client.on("notification", () => this.idleSlots.wakeOne());
    client.on("error", (err) => this.opts.log.warn({ err: err.message }, "LISTEN connection lost; polling until it is back"));
    client.on("end", reconnect);
    try {
      await client.connect();
      await client.query("LISTEN upload_pipeline_jobs");
      await registerWorker(client, this.workerId);
      this.listener = client;
    } catch (err) {
      this.opts.log.warn({ err: coerceError(err).message }, "could not LISTEN; polling until it is back");
      await client.end().catch(() => {});
      reconnect();
    }
  }
}
