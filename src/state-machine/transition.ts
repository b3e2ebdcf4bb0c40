/**
 * The one function that moves a job. Each transition is a single SQL statement: a fenced UPDATE
 * (expected `from` state, and the lease token or the absence of a live lease) and, in the same
 * statement, its `job_events` row. Zero rows updated means the fence failed: the job moved on or
 * the lease is someone else's; nothing was written.
 */
import type pg from "pg";
import { IllegalTransitionError, LeaseLostError, TransitionConflict } from "../errors.ts";
import { namedStatement } from "../db/statements.ts";
import type { Lane } from "../scheduling/lanes.ts";
import { findEdge, type Actor, type JobStatus } from "./table.ts";

/** How a write proves it may touch the job. */
export type Fence =
  /** A worker holding the lease: the row's `lease_token` must still be this one. */
  | { kind: "lease"; token: string; workerId: string }
  /** The webhook handler or the operator: no live lease may exist. */
  | { kind: "unleased"; by?: string };

export interface TransitionRequest {
  jobId: string;
  from: JobStatus;
  to: JobStatus;
  actor: Actor;
  fence: Fence;
  /** Merged into `progress` (jsonb `||`). */
  progress?: Record<string, unknown>;
  parseJobId?: string;
  webhookSecret?: string;
  /** Written to `last_error` (failure edges); `null` clears it (retry edges). */
  lastError?: Record<string, unknown> | null;
  /**
   * Set `attempts` (forward progress starts the count again): 0 for an unleased writer or an
   * operator's retry; 1 for a worker that goes on to the next stage in the same claim, since
   * that claim is already the new stage's first attempt (a crash there must count).
   */
  setAttempts?: number;
  /**
   * Due this many ms after the database's `now` (or the simulated `now`); default 0: a moved job
   * is ready for its next stage at once. Computed in SQL, so worker clocks need not agree.
   */
  dueInMs?: number;
  /** Drop the lease with the move (failure, terminal, or handing the job back to the queue). */
  releaseLease?: boolean;
  /** The attempt to record in the event (defaults to the row's `attempts`). */
  attempt?: number;
  detail?: Record<string, unknown>;
  /** Simulated clock; `undefined` uses the database's `now()`. */
  now?: Date;
}

/** The job as the move left it: what a worker's view of the job must follow. */
export interface MovedJob {
  status: JobStatus;
  attempts: number;
  progress: Record<string, unknown>;
  parse_job_id: string | null;
  webhook_secret: string | null;
  last_error: Record<string, unknown> | null;
  /** The document's, as written earlier in the same transaction (parse intake). */
  parsed_path: string | null;
  parsed_sha256: string | null;
}

export interface TransitionResult {
  eventId: string;
  job: MovedJob;
}

export type Queryable = Pick<pg.Pool | pg.PoolClient, "query">;

// `next_attempt_at` keeps its value when the job stays leased and due (a stage going on to the
// next one): it is a key of the claim index, and leaving it alone keeps the move a HOT update
// with no index entries (migration 0012). The job is due either way.
const TRANSITION = namedStatement(
  "upload_pipeline_transition",
  `
WITH moved AS (
  UPDATE upload_pipeline.upload_jobs AS j SET
    status           = $3,
    progress         = j.progress || coalesce($6::jsonb, '{}'::jsonb),
    parse_job_id     = coalesce($7, j.parse_job_id),
    webhook_secret   = coalesce($8, j.webhook_secret),
    last_error       = CASE WHEN $9::boolean THEN $10::jsonb ELSE j.last_error END,
    attempts         = coalesce($11::int, j.attempts),
    next_attempt_at  = CASE WHEN NOT $13::boolean AND $12::double precision = 0 AND j.next_attempt_at <= coalesce($14::timestamptz, now())
                            THEN j.next_attempt_at
                            ELSE coalesce($14::timestamptz, now()) + make_interval(secs => $12::double precision / 1000)
                       END,
    locked_by        = CASE WHEN $13::boolean THEN NULL ELSE j.locked_by END,
    lease_token      = CASE WHEN $13::boolean THEN NULL ELSE j.lease_token END,
    lease_expires_at = CASE WHEN $13::boolean THEN NULL ELSE j.lease_expires_at END,
    updated_at       = coalesce($14::timestamptz, now())
  WHERE j.job_id = $1
    AND j.status = $2
    AND CASE WHEN $4::uuid IS NOT NULL
             THEN j.lease_token = $4::uuid
             ELSE j.lease_token IS NULL OR j.lease_expires_at <= coalesce($14::timestamptz, now())
        END
  RETURNING j.*
), event AS (
  INSERT INTO upload_pipeline.job_events (job_id, from_status, to_status, worker_id, lease_token, attempt, correlation_id, detail)
  SELECT job_id, $2, $3, $5, $4::uuid, coalesce($15::int, attempts), correlation_id, coalesce($16::jsonb, '{}'::jsonb)
    FROM moved
  RETURNING id
)
SELECT event.id, m.status, m.attempts, m.progress, m.parse_job_id, m.webhook_secret, m.last_error, d.parsed_path, d.parsed_sha256
  FROM moved m CROSS JOIN event JOIN upload_pipeline.documents d USING (document_id)`,
);

/**
 * Move a job from `from` to `to`, or throw:
 * - `IllegalTransitionError` when the table has no such edge for this actor (nothing is written);
 * - `LeaseLostError` when a lease fence no longer holds (another worker owns the job);
 * - `TransitionConflict` when an unleased writer finds the job elsewhere or leased.
 */
export async function transition(db: Queryable, req: TransitionRequest): Promise<TransitionResult> {
  const edge = findEdge(req.from, req.to);
  if (!edge?.actors.includes(req.actor)) throw new IllegalTransitionError(req.from, req.to);
  if (req.actor === "worker" || req.actor === "reconciler") {
    if (req.fence.kind !== "lease") throw new IllegalTransitionError(req.from, req.to);
  }
  const token = req.fence.kind === "lease" ? req.fence.token : null;
  const by = req.fence.kind === "lease" ? req.fence.workerId : (req.fence.by ?? req.actor);
  const { rows } = await db.query<MovedJob & { id: string }>(
    TRANSITION([
      req.jobId,
      req.from,
      req.to,
      token,
      by,
      req.progress ? JSON.stringify(req.progress) : null,
      req.parseJobId ?? null,
      req.webhookSecret ?? null,
      req.lastError !== undefined,
      req.lastError ? JSON.stringify(req.lastError) : null,
      req.setAttempts ?? null,
      req.dueInMs ?? 0,
      req.releaseLease ?? false,
      req.now ?? null,
      req.attempt ?? null,
      req.detail ? JSON.stringify({ actor: req.actor, ...req.detail }) : JSON.stringify({ actor: req.actor }),
    ]),
  );
  if (rows[0]) {
    const { id, ...job } = rows[0];
    return { eventId: id, job };
  }
  if (token) throw new LeaseLostError(req.jobId);
  throw new TransitionConflict(req.jobId, req.from);
}

export interface NewJob {
  jobId: string;
  documentId: string;
  correlationId: string;
  maxAttempts: number;
  /** Scheduling lane (`interactive` unless given): see `lanes` in migration 0006. */
  lane?: Lane | undefined;
  /** Fair-share tenant; unset → the document's `user_id`. */
  tenantId?: string | undefined;
  /** W3C `traceparent` of the request that created the job: the document's trace (src/tracing.ts). */
  traceparent?: string | undefined;
  /**
   * A model migration's job (migration 0011): the profile it fills, created past the stages it
   * does not need (`chunks_stored` when the profile's chunks are stored, else `parse_validated`)
   * with the profile's settings pinned. Unset: an upload's job, created in `uploaded` by the API.
   */
  profile?: { profileId: string; status: JobStatus; actor: Actor; settings: Record<string, unknown>; progress: Record<string, unknown> } | undefined;
}

/**
 * Create a job with its first event (∅ → uploaded, or a migration job's create edge), in one
 * statement. Idempotent: a job that already exists is left untouched and `created` is false.
 */
export async function createJob(db: Queryable, job: NewJob): Promise<{ created: boolean }> {
  const status = job.profile?.status ?? "uploaded";
  const actor = job.profile?.actor ?? "api";
  if (!findEdge(null, status)?.actors.includes(actor)) throw new IllegalTransitionError(null, status);
  const { rows } = await db.query(
    `WITH inserted AS (
       INSERT INTO upload_pipeline.upload_jobs (job_id, document_id, status, max_attempts, correlation_id, lane, tenant_id, profile_id, settings, progress, traceparent)
       VALUES ($1, $2, $7, $3, $4, $5, $6, $8, $9::jsonb, coalesce($10::jsonb, '{}'::jsonb), $12)
       ON CONFLICT (job_id) DO NOTHING
       RETURNING job_id, correlation_id
     )
     INSERT INTO upload_pipeline.job_events (job_id, from_status, to_status, worker_id, attempt, correlation_id, detail)
     SELECT job_id, NULL, $7, $11, 0, correlation_id, jsonb_build_object('actor', $11::text) FROM inserted
     RETURNING id`,
    [
      job.jobId,
      job.documentId,
      job.maxAttempts,
      job.correlationId,
      job.lane ?? "interactive",
      job.tenantId ?? null,
      status,
      job.profile?.profileId ?? null,
      job.profile ? JSON.stringify(job.profile.settings) : null,
      job.profile ? JSON.stringify(job.profile.progress) : null,
      actor,
      job.traceparent ?? null,
    ],
  );
  return { created: rows.length > 0 };
}
