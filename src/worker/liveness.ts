/**
 * Worker liveness (migration 0009): how a dead worker's jobs are taken over in seconds rather
 * than after its lease.
 *
 * A worker process registers on its long-lived LISTEN connection and, in the same statement,
 * takes a session-level advisory lock on its registration's key. Postgres releases that lock the
 * moment the session ends, which happens as soon as the process dies (SIGKILL, OOM kill, crash):
 * the kernel closes its socket. Every worker periodically tries each registration's lock inside
 * a transaction; one it can take belongs to a dead process, so the registration is deleted and
 * the dead worker's jobs are handed back to the queue, in one statement.
 *
 * What it does not replace: a process that is alive but frozen (SIGSTOP, a long GC pause, a VM
 * migration) keeps its connection and its lock, so its lease still decides (and fencing still
 * stops it from writing once another worker has taken over). A worker whose LISTEN connection
 * drops while it lives looks dead: its jobs are handed back, its fenced writes then fail with
 * LeaseLostError, and nothing is written twice; it registers again when it reconnects.
 */
import type { Queryable } from "../state-machine/transition.ts";

/** Namespace of the two-key advisory locks (`pg_advisory_lock(int, int)`): "upwk". */
const LIVENESS_LOCK_SPACE = 0x7570776b;

/**
 * Register `workerId` and hold its lock for as long as `session` lives. One statement, so no
 * other worker can see the registration before its lock is held.
 */
export async function registerWorker(session: Queryable, workerId: string): Promise<void> {
  await session.query(
    `WITH key AS (SELECT nextval('upload_pipeline.worker_lock_key_seq')::integer AS lock_key),
          held AS (SELECT lock_key, pg_advisory_lock($2, lock_key) FROM key)
     INSERT INTO upload_pipeline.workers (worker_id, lock_key, registered_at)
     SELECT $1, lock_key, now() FROM held
     ON CONFLICT (worker_id) DO UPDATE SET lock_key = EXCLUDED.lock_key, registered_at = EXCLUDED.registered_at`,
    [workerId, LIVENESS_LOCK_SPACE],
  );
}

/** Remove our registration on a clean stop (the lock goes with the session). */
export async function unregisterWorker(db: Queryable, workerId: string): Promise<void> {
  await db.query("DELETE FROM upload_pipeline.workers WHERE worker_id = $1", [workerId]);
}

export interface ReapedJob {
  job_id: string;
  locked_by: string;
}

/**
 * Delete the registrations whose lock nobody holds any more and hand their jobs back to the
 * queue (the NOTIFY trigger wakes idle slots). The attempt the dead worker was on stays counted,
 * so a job that keeps killing its workers still reaches the dead letter. A registration older
 * than the server's start is not judged: a restart drops every lock, living workers included.
 */
export async function reapDeadWorkers(db: Queryable): Promise<ReapedJob[]> {
  const { rows } = await db.query<ReapedJob>(
    `WITH dead AS (
       DELETE FROM upload_pipeline.workers w
        WHERE w.registered_at >= pg_postmaster_start_time()
          AND pg_try_advisory_xact_lock($1, w.lock_key)
       RETURNING w.worker_id
     ), forgotten AS (
       -- Registered before a restart and not again within 10 minutes of it: gone. Their leases
       -- have long expired, so only the registration is removed.
       DELETE FROM upload_pipeline.workers
        WHERE registered_at < pg_postmaster_start_time() AND now() > pg_postmaster_start_time() + interval '10 minutes'
     )
     -- Due now: a held job was being worked on, whatever its holder had set for later (a job
     -- that committed parse_queued with an early webhook keeps its lease to fetch the result at
     -- once, due at the webhook deadline only if it is released).
     UPDATE upload_pipeline.upload_jobs j SET
        locked_by = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now(),
        next_attempt_at = least(j.next_attempt_at, now())
       FROM dead
      WHERE j.unfinished AND j.locked_by = dead.worker_id
     RETURNING j.job_id, dead.worker_id AS locked_by`,
    [LIVENESS_LOCK_SPACE],
  );
  return rows;
}
