/**
 * The reads the checker makes. Everything is read after quiescence, so plain queries on a pool
 * are enough; per-document reads keep one document's buffers in memory at a time (a large
 * document's vectors are paged by chunk_ord range, which stays correct even when a planted
 * duplicate makes rows share a key).
 */
import type pg from "pg";

export type Db = Pick<pg.Pool, "query">;

export interface JobRow {
  job_id: string;
  document_id: string;
  status: string;
  progress: Record<string, unknown>;
  locked_by: string | null;
  lease_token: string | null;
  lease_live: boolean | null;
  /** A model migration's job: the profile it fills (null: the upload's own job). */
  profile_id: string | null;
}

export interface EventRow {
  id: string;
  job_id: string;
  from_status: string | null;
  to_status: string;
  worker_id: string | null;
  lease_token: string | null;
  actor: string | null;
  at: Date;
}

export interface ChunkRow {
  chunk_id: string;
  chunker_name: string;
  chunker_version: string;
  chunk_ord: number;
  text: string;
  chunk_sha: string;
}

export interface VectorRow {
  chunk_id: string;
  chunk_ord: number;
  text: string;
  embed_model: string;
  embed_version: string;
  embedding: number[];
  vector_sha: string;
}

export async function loadJobs(db: Db): Promise<JobRow[]> {
  const { rows } = await db.query<JobRow>(
    `SELECT job_id, document_id, status, progress, locked_by, lease_token, profile_id,
            lease_expires_at > clock_timestamp() AS lease_live
       FROM upload_pipeline.upload_jobs ORDER BY created_at, job_id`,
  );
  return rows;
}

export async function loadDocumentIds(db: Db): Promise<string[]> {
  const { rows } = await db.query<{ document_id: string }>("SELECT document_id FROM upload_pipeline.documents ORDER BY document_id");
  return rows.map((r) => r.document_id);
}

/** Every event in causal order per job (`id` order is commit order within a job, SPEC §3). */
export async function loadEvents(db: Db): Promise<EventRow[]> {
  const { rows } = await db.query<EventRow>(
    `SELECT id::text AS id, job_id, from_status, to_status, worker_id, lease_token::text AS lease_token,
            detail->>'actor' AS actor, at
       FROM upload_pipeline.job_events ORDER BY job_id, id`,
  );
  return rows;
}

/** All chunk rows of a document (every chunker), in ord order. */
export async function loadChunks(db: Db, documentId: string): Promise<ChunkRow[]> {
  const { rows } = await db.query<ChunkRow>(
    `SELECT chunk_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha
       FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1
      ORDER BY chunker_name, chunker_version, chunk_ord, chunk_id`,
    [documentId],
  );
  return rows;
}

/** Vector rows of a document's chunks with `lo <= chunk_ord < hi`, with their chunk's text. */
export async function loadVectors(db: Db, documentId: string, lo: number, hi: number): Promise<VectorRow[]> {
  const { rows } = await db.query<VectorRow>(
    `SELECT v.chunk_id, c.chunk_ord, c.text, v.embed_model, v.embed_version, v.embedding, v.vector_sha
       FROM upload_pipeline.document_vector_buffer v
       JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
      WHERE c.document_id = $1 AND c.chunk_ord >= $2 AND c.chunk_ord < $3
      ORDER BY c.chunk_ord, v.chunk_id, v.embed_model, v.embed_version`,
    [documentId, lo, hi],
  );
  return rows;
}
