/**
 * The operator's retry of a dead-lettered job, shared by `POST /jobs/{document_id}/retry` and
 * `npm run dlq -- retry`: only a job in a failed_* state, back to the last state it reached (a
 * failed parse: to `uploaded`, a new parse),
 * attempts reset, last_error cleared, one fenced statement with its event.
 */
import type pg from "pg";
import { PermanentError, TransitionConflict } from "../errors.ts";
import { FAILURE_OF, findEdge, isFailed, isJobStatus, type FailedState, type JobStatus, type PipelineState } from "./table.ts";
import { transition } from "./transition.ts";

export interface RetryResult {
  jobId: string;
  from: FailedState;
  to: PipelineState;
}

/** Only a dead-lettered job can be retried: a `PermanentError` `not_failed` otherwise. */
export function assertRetryable(status: JobStatus): asserts status is FailedState {
  if (!isFailed(status)) {
    throw new PermanentError("not_failed", `The job is in '${status}'; only a job in failed_parse, failed_chunking or failed_embedding can be retried.`);
  }
}

/**
 * Retry one job. Throws a `PermanentError` with code `not_failed` (the job is not in a failed
 * state) or `conflict` (it changed meanwhile: another retry won).
 */
export async function retryFailedJob(
  pool: pg.Pool,
  job: { jobId: string; status: JobStatus; lastError: Record<string, unknown> | null },
  requestedBy: string,
): Promise<RetryResult> {
  const from = job.status;
  assertRetryable(from);
  const to = await retryTarget(pool, job.jobId, from, job.lastError);
  try {
    await transition(pool, {
      jobId: job.jobId,
      from,
      to,
      actor: "operator",
      fence: { kind: "unleased", by: "operator" },
      setAttempts: 0,
      lastError: null,
      releaseLease: true,
      // A retried parse is a new submission (new LlamaParse job, new webhook secret): forget
      // the old one's intent so the submit stage cannot find the failed job by its tags.
      ...(from === "failed_parse" ? { progress: { parse_submit: null } } : {}),
      detail: { retried_from: from, requested_by: requestedBy },
    });
  } catch (err) {
    if (err instanceof TransitionConflict) {
      throw new PermanentError("conflict", "The job changed while retrying (another retry won).", { cause: err });
    }
    throw err;
  }
  return { jobId: job.jobId, from, to };
}

/**
 * The state a failed job goes back to: the `from_status` of the event that failed it (the
 * last state it reached), which the state machine's retry edges allow by construction. Falls
 * back to `last_error.stage`, then to the first state of the failed stage; every stage resumes
 * from what the buffers hold, so an earlier state loses nothing but time. A failed parse always
 * goes back to `uploaded` (the table has no other retry edge for it): a retry re-parses.
 */
export async function retryTarget(pool: pg.Pool, jobId: string, failed: FailedState, lastError: Record<string, unknown> | null): Promise<PipelineState> {
  const { rows } = await pool.query<{ from_status: string | null }>(
    "SELECT from_status FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status = $2 ORDER BY id DESC LIMIT 1",
    [jobId, failed],
  );
  const candidates = [rows[0]?.from_status, typeof lastError?.stage === "string" ? lastError.stage : undefined];
  for (const c of candidates) {
    if (c && isJobStatus(c) && findEdge(failed, c)?.kind === "retry") return c as PipelineState;
  }
  return (Object.keys(FAILURE_OF) as PipelineState[]).find((s) => FAILURE_OF[s as keyof typeof FAILURE_OF] === failed)!;
}
