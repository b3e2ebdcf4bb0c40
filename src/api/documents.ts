/**
 * Documents and jobs as the routes look them up: the path parameter, ownership (a user sees
 * only their own documents; anyone else's is indistinguishable from a missing one), the job.
 */
import type pg from "pg";
import { z } from "zod";
import type { Lane } from "../scheduling/lanes.ts";
import type { Principal } from "./auth.ts";

export const DocumentParams = z.object({
  document_id: z.uuid("must be a document id (a UUID, as returned by POST /upload)").transform((s) => s.toLowerCase()),
});

export interface DocumentRow {
  document_id: string;
  user_id: string;
  filename: string;
  mime: string;
  /** bigint, as pg returns it. */
  bytes: string;
  file_sha256: string;
  raw_path: string;
  lane: Lane;
}

const DOCUMENT_COLUMNS = "document_id, user_id, filename, mime, bytes, file_sha256, raw_path, lane";

/** The document if `who` may see it: its owner, or the service role. Anyone else gets undefined (→ 404). */
export async function findOwnedDocument(pool: pg.Pool, documentId: string, who: Principal): Promise<DocumentRow | undefined> {
  const { rows } = await pool.query<DocumentRow>(
    `SELECT ${DOCUMENT_COLUMNS} FROM upload_pipeline.documents
      WHERE document_id = $1 AND ($2::boolean OR user_id = $3::uuid)`,
    [documentId, who.isService, who.userId],
  );
  return rows[0];
}

/**
 * Insert the document unless it exists; either way answer the row as stored (a concurrent
 * request may have inserted it first, with its own file name).
 */
export async function insertDocument(
  pool: pg.Pool,
  d: {
    documentId: string;
    userId: string;
    filename: string;
    mime: string;
    bytes: number;
    sha256: string;
    rawPath: string;
    lane: Lane;
    tenantId: string | null;
  },
): Promise<{ row: DocumentRow; created: boolean }> {
  const inserted = await pool.query<DocumentRow>(
    `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path, lane, tenant_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (document_id) DO NOTHING
     RETURNING ${DOCUMENT_COLUMNS}`,
    [d.documentId, d.userId, d.filename, d.mime, d.bytes, d.sha256, d.rawPath, d.lane, d.tenantId],
  );
  if (inserted.rows[0]) return { row: inserted.rows[0], created: true };
  const { rows } = await pool.query<DocumentRow>(`SELECT ${DOCUMENT_COLUMNS} FROM upload_pipeline.documents WHERE document_id = $1`, [d.documentId]);
  return { row: rows[0]!, created: false };
}

export async function findJob(pool: pg.Pool, documentId: string): Promise<{ job_id: string; status: string } | undefined> {
  const { rows } = await pool.query<{ job_id: string; status: string }>(
    "SELECT job_id, status FROM upload_pipeline.upload_jobs WHERE document_id = $1 AND profile_id IS NULL",
    [documentId],
  );
  return rows[0];
}
