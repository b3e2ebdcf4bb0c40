/**
 * Test fixtures: documents and jobs created the way the API creates them (`createJob`), and a
 * way to place a job in any state for a test's starting point (a direct write, fixtures only).
 */
import { randomUUID } from "node:crypto";
import type pg from "pg";
import { documentId, jobId, sha256 } from "../../src/ids.ts";
import type { Lane } from "../../src/scheduling/lanes.ts";
import type { JobStatus } from "../../src/state-machine/table.ts";
import { createJob } from "../../src/state-machine/transition.ts";

export interface SeededJob {
  documentId: string;
  jobId: string;
  userId: string;
}

export async function seedJob(
  pool: pg.Pool,
  opts: { status?: JobStatus; content?: string; userId?: string; maxAttempts?: number; filename?: string; lane?: Lane; tenantId?: string } = {},
): Promise<SeededJob> {
  const userId = opts.userId ?? randomUUID();
  const content = opts.content ?? `document ${randomUUID()}`;
  const fileSha = sha256(content);
  const docId = documentId(userId, fileSha);
  const filename = opts.filename ?? "doc.md";
  await pool.query(
    `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
     VALUES ($1, $2, $3, 'text/markdown', $4, $5, $6) ON CONFLICT DO NOTHING`,
    [docId, userId, filename, Buffer.byteLength(content), fileSha, `${userId}/raw/${docId}/${filename}`],
  );
  const id = jobId(docId);
  await createJob(pool, {
    jobId: id,
    documentId: docId,
    correlationId: randomUUID(),
    maxAttempts: opts.maxAttempts ?? 5,
    lane: opts.lane,
    tenantId: opts.tenantId,
  });
  if (opts.status && opts.status !== "uploaded") {
    await pool.query("UPDATE upload_pipeline.upload_jobs SET status = $2 WHERE job_id = $1", [id, opts.status]);
  }
  return { documentId: docId, jobId: id, userId };
}

/** Put a job at the head of the queue at `at` (a test's clock): due then, and older than any other. */
export async function makeDue(pool: pg.Pool, jobId: string, at: Date | number) {
  await pool.query(
    "UPDATE upload_pipeline.upload_jobs SET next_attempt_at = $2::timestamptz, created_at = $2::timestamptz - interval '1 year' WHERE job_id = $1",
    [jobId, new Date(at)],
  );
}

export async function jobRow(pool: pg.Pool, id: string) {
  const { rows } = await pool.query("SELECT * FROM upload_pipeline.upload_jobs WHERE job_id = $1", [id]);
  return rows[0];
}

export async function events(pool: pg.Pool, id: string) {
  const { rows } = await pool.query(
    "SELECT from_status, to_status, worker_id, lease_token, attempt, detail FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id",
    [id],
  );
  return rows as Array<{
    from_status: string | null;
    to_status: string;
    worker_id: string | null;
    lease_token: string | null;
    attempt: number;
    detail: Record<string, unknown>;
  }>;
}
