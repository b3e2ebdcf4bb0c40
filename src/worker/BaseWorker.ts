/**
 * The worker: N slots, each a loop of `claim → run stages → release`, sharing one pool.
 *
 *   while (!stopping) { job = claimNextJob() ?? await idle(); work(job) }
 *
 * A notification (LISTEN upload_pipeline_jobs) wakes one idle slot, `stop()` wakes them all; polling with
 * backoff is the fallback when notifications are lost (Postgres restarts, pooled connections).
 */
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import pg from "pg";
import { coerceError, LeaseLostError, type PipelineError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { ACTIONABLE_STATES, FAILURE_OF, isTerminal, type JobStatus, type PipelineState } from "../state-machine/table.ts";
import { withTransaction } from "../db/transaction.ts";
import { transition, type Queryable } from "../state-machine/transition.ts";
import { backoffDelayMs } from "./backoff.ts";
import { NO_FAULTS, SimulatedCrash, type FaultPoints } from "./faultPoints.ts";
import { reapDeadWorkers, registerWorker, unregisterWorker } from "./liveness.ts";
import { IdleSlots } from "./idleSlots.ts";
import { claimNextJob, heartbeat, releaseJob, type ClaimedJob } from "./queries.ts";
import type { Stage, StageContext, StageOutcome } from "./stage.ts";

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
  faults?: FaultPoints;
  /** Simulated clock for tests; omitted → the database's `now()`. */
  clock?: () => Date;
  random?: () => number;
  /** Called after each job run, for tests and the scenario runner's spies. */
  onJobDone?: (event: { jobId: string; status: JobStatus; outcome: "released" | "retry" | "failed" | "terminal" | "snoozed" | "lost" | "crashed" }) => void;
}

/**
 * How often a worker looks for dead workers' jobs: one short statement over a table with a row per
 * worker process, so a killed worker's jobs wait about 2 s instead of its lease (60 s by default).
 */
const REAP_INTERVAL_MS = 2_000;

/** Whether a stage's transition already handed the job back to the queue. */
interface LeaseState {
  released: boolean;
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

  constructor(private readonly opts: WorkerOptions<Services>) {
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
      for (const ctl of this.active.values()) ctl.abort(new Error("shutdown timeout"));
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
    const job = await claimNextJob(this.opts.pool, { workerId: this.workerId, leaseSeconds: this.opts.leaseSeconds, now: this.opts.clock?.() });
    if (job) await this.work(job);
    return job;
  }

  private async runSlot(slot: number): Promise<void> {
    let idleMs = 50;
    while (!this.stopping) {
      let job: ClaimedJob | undefined;
      try {
        job = await claimNextJob(this.opts.pool, { workerId: this.workerId, leaseSeconds: this.opts.leaseSeconds, now: this.opts.clock?.() });
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
   * Be careful about what can throw here: once a job is claimed we MUST either move it, release
   * it, or (only for a simulated crash, or a lost lease) leave it for its lease to expire.
   */
  private async work(job: ClaimedJob): Promise<void> {
    const controller = new AbortController();
    const lease: LeaseState = { released: false };
    this.active.set(job.job_id, controller);
    const log = this.opts.log.child({
      correlation_id: job.correlation_id,
      job_id: job.job_id,
      worker_id: this.workerId,
      stage: job.status,
    });
    const beat = setInterval(() => {
      heartbeat(this.opts.pool, { jobId: job.job_id, leaseToken: job.lease_token, leaseSeconds: this.opts.leaseSeconds, now: this.opts.clock?.() })
        .then((ours) => ours || controller.abort(new LeaseLostError(job.job_id)))
        .catch((err) => log.warn({ err: coerceError(err).message }, "heartbeat failed"));
    }, Math.max(250, (this.opts.leaseSeconds * 1000) / 3));
    const done = (outcome: Parameters<NonNullable<WorkerOptions<Services>["onJobDone"]>>[0]["outcome"]) =>
      this.opts.onJobDone?.({ jobId: job.job_id, status: job.status, outcome });
    try {
      await this.faults.hit("claim.after", { jobId: job.job_id, status: job.status });
      if (job.attempts > job.max_attempts) {
        // Every earlier attempt died without recording anything (crashes, lost leases).
        await this.fail(job, log, coerceError(new Error(`attempts exhausted: ${job.max_attempts} attempts ended without finishing stage ${job.status}`)), "attempts_exhausted");
        return done("failed");
      }
      const outcome = await this.runStages(job, lease, controller.signal, log);
      if (outcome?.next === "snooze") {
        await releaseJob(this.opts.pool, {
          jobId: job.job_id,
          leaseToken: job.lease_token,
          delayMs: outcome.delayMs,
          refundAttempt: true,
          now: this.opts.clock?.(),
        });
        return done("snoozed");
      }
      if (isTerminal(job.status)) return done("terminal");
      if (lease.released) return done("released");
      // Stopped between stages (shutdown): the stage it finished was not a failed attempt.
      await releaseJob(this.opts.pool, { jobId: job.job_id, leaseToken: job.lease_token, refundAttempt: true, now: this.opts.clock?.() });
      return done("released");
    } catch (thrown) {
      if (thrown instanceof SimulatedCrash) {
        log.warn({ point: thrown.point }, "simulated crash: abandoning the job without cleanup");
        return done("crashed");
      }
      const err = controller.signal.aborted && controller.signal.reason instanceof LeaseLostError ? controller.signal.reason : coerceError(thrown);
      if (err instanceof LeaseLostError) {
        log.warn("lease lost; another worker owns the job now");
        return done("lost");
      }
      try {
        if (err.errorClass === "permanent" || job.attempts >= job.max_attempts) {
          await this.fail(job, log, err, err.errorClass === "permanent" ? "permanent" : "attempts_exhausted");
          return done("failed");
        }
        const delay = backoffDelayMs(job.attempts, {
          baseMs: this.opts.retryBaseMs,
          maxMs: this.opts.retryMaxMs,
          random: this.opts.random,
          retryAfterMs: err.retryAfterMs,
        });
        log.warn({ err: err.message, code: err.code, attempt: job.attempts, retry_in_ms: delay }, "transient error; will retry");
        await releaseJob(this.opts.pool, {
          jobId: job.job_id,
          leaseToken: job.lease_token,
          delayMs: delay,
          lastError: this.errorRecord(job, err),
          now: this.opts.clock?.(),
        });
        return done("retry");
      } catch (cleanupErr) {
        // Could not record the failure (database down, or the lease is gone): the lease
        // expires and the job is retried from its current state, which every stage tolerates.
        log.error({ err: coerceError(cleanupErr).message }, "could not record the failure; leaving the job to its lease");
        return done("lost");
      }
    } finally {
      clearInterval(beat);
      this.active.delete(job.job_id);
    }
  }

  /** Run stages while the job stays ours and actionable; stop early when shutting down. */
  private async runStages(job: ClaimedJob, lease: LeaseState, signal: AbortSignal, parentLog: Logger): Promise<StageOutcome | void> {
    while (!isTerminal(job.status) && (ACTIONABLE_STATES as readonly string[]).includes(job.status)) {
      const stage = this.routes.get(job.status as PipelineState);
      if (!stage) throw new Error(`no stage handles state ${job.status}`);
      const before = job.status;
      const ctx = this.context(job, lease, signal, parentLog.child({ stage: stage.name }));
      await this.faults.hit(`stage.${stage.name}.before`, { jobId: job.job_id, status: before });
      const outcome = await stage.run(ctx);
      await this.faults.hit(`stage.${stage.name}.after`, { jobId: job.job_id, status: job.status });
      if (outcome?.next === "snooze") return outcome;
      if (job.status === before) throw new Error(`stage ${stage.name} returned without moving job from ${before}`);
      if (lease.released) return; // the stage handed the job back with its last transition
      if (this.stopping) return;
      signal.throwIfAborted();
    }
  }

  private context(job: ClaimedJob, lease: LeaseState, signal: AbortSignal, log: Logger): StageContext<Services> {
    const fence = { kind: "lease" as const, token: job.lease_token, workerId: this.workerId };
    const pool = this.opts.pool;
    const clock = this.opts.clock;
    /** A fenced move of this job on `db` (the pool, or the open transaction of `fenced`). */
    const move = async (db: Queryable, to: JobStatus, options: Parameters<StageContext<Services>["transition"]>[1] = {}) => {
      const { actor = "worker", ...rest } = options;
      const releaseLease = rest.releaseLease ?? isTerminal(to);
      await transition(db, {
        jobId: job.job_id,
        from: job.status,
        to,
        actor,
        fence,
        // Still ours after the move: this claim is the next stage's first attempt. Handed back:
        // the next claim starts the count.
        setAttempts: releaseLease ? 0 : 1,
        attempt: job.attempts,
        now: clock?.(),
        ...rest,
        releaseLease,
      });
      job.status = to;
      job.attempts = releaseLease ? 0 : 1;
      if (releaseLease) lease.released = true;
      if (rest.parseJobId) job.parse_job_id = rest.parseJobId;
      if (rest.webhookSecret) job.webhook_secret = rest.webhookSecret;
    };
    return {
      job,
      workerId: this.workerId,
      pool,
      services: this.opts.services,
      log,
      signal,
      faults: this.faults,
      now: () => clock?.(),
      transition: (to, options) => move(pool, to, options),
      fenced: (fn) =>
        withTransaction(pool, async (client) => {
          const { rowCount } = await client.query(
            "SELECT 1 FROM upload_pipeline.upload_jobs WHERE job_id = $1 AND lease_token = $2 FOR UPDATE",
            [job.job_id, job.lease_token],
          );
          if (rowCount !== 1) throw new LeaseLostError(job.job_id);
          return fn({ client, transition: (to, options) => move(client, to, options) });
        }),
    };
  }

  /** Dead letter: move to the failed state of the job's stage, with `last_error`, releasing the lease. */
  private async fail(job: ClaimedJob, log: Logger, err: PipelineError, reason: "permanent" | "attempts_exhausted"): Promise<void> {
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
      now: this.opts.clock?.(),
    });
    log.error({ code: err.code, reason, to, attempt: job.attempts }, "job failed");
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
    const reconnect = () => {
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
      this.opts.log.warn({ err: coerceError(err).message }, "could not LISTEN; polling only for now");
      await client.end().catch(() => {});
    }
  }
}
