/**
 * The worker's own queries, named after what they do. Every one that writes is fenced by the
 * lease token; `$now` is `coalesce($n, now())` so tests can drive a simulated clock (River's
 * `now` parameter, graphile-worker's `useNodeTime`).
 */
import { namedStatement } from "../db/statements.ts";
import type { Queryable } from "../state-machine/transition.ts";
import type { JobStatus } from "../state-machine/table.ts";

export interface ClaimedJob {
  job_id: string;
  document_id: string;
  status: JobStatus;
  progress: Record<string, number>;
  attempts: number;
  max_attempts: number;
  lease_token: string;
  lease_expires_at: Date;
  locked_by: string;
  last_error: Record<string, unknown> | null;
  webhook_secret: string | null;
  parse_job_id: string | null;
  correlation_id: string;
  /** The settings pinned on the job (migration 0004); `null` until a stage pins them. */
  settings: Record<string, unknown> | null;
  user_id: string;
  filename: string;
  mime: string;
  bytes: string;
  file_sha256: string;
  raw_path: string;
  parsed_path: string | null;
  parsed_sha256: string | null;
  /**
   * How long ago (ms) the previous holder's lease ran out, when it ran out rather than being
   * released: that holder may be frozen mid-call and resume (see submitParse). Null otherwise.
   */
  previous_lease_expired_ms: number | null;
}

/** The claim statement ($1 worker id, $2 lease seconds, $3 simulated now or null); see claimNextJob. */
export const CLAIM_NEXT_JOB_SQL = `WITH candidate AS (
   SELECT job_id, lease_expires_at AS previous_lease_expires_at FROM upload_pipeline.upload_jobs
    WHERE unfinished
      AND next_attempt_at <= coalesce($3::timestamptz, now())
      AND (lease_expires_at IS NULL OR lease_expires_at <= coalesce($3::timestamptz, now()))
    ORDER BY fair_tag
    LIMIT 1
    FOR UPDATE SKIP LOCKED
 ), claimed AS (
   UPDATE upload_pipeline.upload_jobs AS j SET
     locked_by = $1,
     lease_token = gen_random_uuid(),
     lease_expires_at = coalesce($3::timestamptz, now()) + make_interval(secs => $2),
     attempts = j.attempts + 1,
     updated_at = coalesce($3::timestamptz, now())
   FROM candidate WHERE j.job_id = candidate.job_id
   RETURNING j.*
 )
 SELECT c.job_id, c.document_id, c.status, c.progress, c.attempts, c.max_attempts, c.lease_token,
        c.lease_expires_at, c.locked_by, c.last_error, c.webhook_secret, c.parse_job_id, c.correlation_id, c.settings,
        d.user_id, d.filename, d.mime, d.bytes, d.file_sha256, d.raw_path, d.parsed_path, d.parsed_sha256,
        extract(epoch FROM coalesce($3::timestamptz, now()) - cand.previous_lease_expires_at) * 1000 AS previous_lease_expired_ms
   FROM claimed c JOIN candidate cand USING (job_id) JOIN upload_pipeline.documents d USING (document_id)`;

const CLAIM_NEXT_JOB = namedStatement("upload_pipeline_claim_next_job", CLAIM_NEXT_JOB_SQL);

/**
 * Take the due, unleased job with the smallest fair tag and lease it, in one statement.
 * Fair tags (migration 0006) order jobs by weighted fair share across tenants and lanes; the
 * scan walks `upload_jobs_claim_idx` in tag order, checks "due" inside the index and stops at the
 * first free row, so 10^6 finished jobs are never read. `WHERE unfinished` is the index's own
 * predicate (migration 0012), so it matches under a generic plan too; the claim changes no
 * indexed column, so it is a HOT update. `SKIP LOCKED` lets many workers claim
 * concurrently without blocking on each other's candidate rows; a lease whose holder stopped
 * heartbeating (expired) counts as free. Counts the claim as an attempt: a job whose worker keeps
 * dying mid-stage runs out of attempts and is dead-lettered instead of crash-looping forever.
 */
export async function claimNextJob(db: Queryable, args: { workerId: string; leaseSeconds: number; now?: Date | undefined }): Promise<ClaimedJob | undefined> {
  const { rows } = await db.query<ClaimedJob>(CLAIM_NEXT_JOB([args.workerId, args.leaseSeconds, args.now ?? null]));
  return rows[0];
}

/** Extend our lease; false means it is no longer ours (expired and taken over). */
export async function heartbeat(db: Queryable, args: { jobId: string; leaseToken: string; leaseSeconds: number; now?: Date | undefined }): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE upload_pipeline.upload_jobs
        SET lease_expires_at = coalesce($3::timestamptz, now()) + make_interval(secs => $4)
      WHERE job_id = $1 AND lease_token = $2`,
    [args.jobId, args.leaseToken, args.now ?? null, args.leaseSeconds],
  );
  return rowCount === 1;
}

/**
 * Give the job back to the queue without moving it: due `delayMs` after now (default at once).
 * Used after a stage returns, for a transient failure's backoff (with `lastError`), and for a
 * snooze (`refundAttempt`: waiting on LlamaParse is not a failed attempt).
 */
export async function releaseJob(
  db: Queryable,
  args: {
    jobId: string;
    leaseToken: string;
    delayMs?: number | undefined;
    lastError?: Record<string, unknown> | undefined;
    refundAttempt?: boolean;
    now?: Date | undefined;
  },
): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE upload_pipeline.upload_jobs SET
        locked_by = NULL, lease_token = NULL, lease_expires_at = NULL,
        next_attempt_at = coalesce($6::timestamptz, now()) + make_interval(secs => $3::double precision / 1000),
        last_error = coalesce($4::jsonb, last_error),
        attempts = CASE WHEN $5::boolean THEN greatest(attempts - 1, 0) ELSE attempts END,
        updated_at = coalesce($6::timestamptz, now())
      WHERE job_id = $1 AND lease_token = $2`,
    [args.jobId, args.leaseToken, args.delayMs ?? 0, args.lastError ? JSON.stringify(args.lastError) : null, args.refundAttempt ?? false, args.now ?? null],
  );
  return rowCount === 1;
}

/**
 * Lock the job row inside an open transaction if our lease still holds it: the first statement
 * of every fenced multi-row write. False means the job is no longer ours.
 */
export async function lockLeasedJob(db: Queryable, args: { jobId: string; leaseToken: string }): Promise<boolean> {
  const { rowCount } = await db.query("SELECT 1 FROM upload_pipeline.upload_jobs WHERE job_id = $1 AND lease_token = $2 FOR UPDATE", [
    args.jobId,
    args.leaseToken,
  ]);
  return rowCount === 1;
}

/**
 * How long our lease has left, in ms by the database's clock; undefined when it is not ours or
 * has expired (a frozen worker whose lease ran out still holds the token until someone claims).
 */
export async function leaseRemainingMs(db: Queryable, args: { jobId: string; leaseToken: string; now?: Date | undefined }): Promise<number | undefined> {
  const { rows } = await db.query<{ ms: number }>(
    `SELECT extract(epoch FROM lease_expires_at - coalesce($3::timestamptz, now())) * 1000 AS ms
       FROM upload_pipeline.upload_jobs
      WHERE job_id = $1 AND lease_token = $2 AND lease_expires_at > coalesce($3::timestamptz, now())`,
    [args.jobId, args.leaseToken, args.now ?? null],
  );
  return rows[0] ? Number(rows[0].ms) : undefined;
}
