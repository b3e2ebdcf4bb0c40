/**
 * `embeddings_stored → complete`: verify that every chunk has exactly one vector for the model
 * and version and that each stored vector still hashes to its `vector_sha`, promote the vectors
 * into `document_chunks` (pgvector) where that table exists, and record the final figures.
 */
import { float4ArrayFromSend } from "../db/float4Array.ts";
import { PermanentError } from "../errors.ts";
import { enqueueForOtherProfiles } from "../profiles/jobs.ts";
import { vectorSha } from "../ids.ts";
import type { Stage } from "../worker/stage.ts";
import type { PipelineServices } from "./services.ts";
import { jobSettings } from "./settings.ts";

/**
 * Vectors re-hashed per query while verifying: memory holds one page (a 1536-dimension vector
 * is ~25 KB as `array_send` hex), so keep it near an embedding batch. 500 made the worker's peak
 * RSS grow with the document (bench/memory.ts).
 */
const VERIFY_PAGE = 64;

export const finishDocument: Stage<PipelineServices> = {
  name: "finish",
  handles: ["embeddings_stored"],
  async run(ctx) {
    const job = ctx.job;
    // The model and version the job was embedded with, whatever this worker is configured with.
    const pinned = await jobSettings(ctx);
    const key = [job.document_id, pinned.chunkerName, pinned.chunkerVersion, pinned.embedModel, pinned.embedVersion];
    const counts = await ctx.pool.query<{ chunks: number; vectors: number; vector_rows: number }>(
      `SELECT count(*)::int AS chunks,
              count(*) FILTER (WHERE v.n = 1)::int AS vectors,
              coalesce(sum(v.n), 0)::int AS vector_rows
         FROM upload_pipeline.document_chunk_buffer c
         LEFT JOIN LATERAL (SELECT count(*) AS n FROM upload_pipeline.document_vector_buffer v
                             WHERE v.chunk_id = c.chunk_id AND v.embed_model = $4 AND v.embed_version = $5) v ON true
        WHERE c.document_id = $1 AND c.chunker_name = $2 AND c.chunker_version = $3`,
      key,
    );
    const { chunks, vectors, vector_rows } = counts.rows[0]!;
    if (chunks === 0 || vectors !== chunks || vector_rows !== chunks) {
      throw new PermanentError("vectors_incomplete", `${chunks} chunks but ${vectors} with exactly one vector (${vector_rows} vector rows)`);
    }

    // Keyset paging by chunk_ord: each page is one index range scan, however large the document.
    for (let after = -1; ; ) {
      const { rows } = await ctx.pool.query<{ chunk_ord: number; embedding: Buffer; vector_sha: string }>(
        `SELECT c.chunk_ord, array_send(v.embedding) AS embedding, v.vector_sha
           FROM upload_pipeline.document_chunk_buffer c
           JOIN upload_pipeline.document_vector_buffer v ON v.chunk_id = c.chunk_id AND v.embed_model = $4 AND v.embed_version = $5
          WHERE c.document_id = $1 AND c.chunker_name = $2 AND c.chunker_version = $3 AND c.chunk_ord > $7
          ORDER BY c.chunk_ord LIMIT $6`,
        [...key, VERIFY_PAGE, after],
      );
      for (const row of rows) {
        if (vectorSha(float4ArrayFromSend(row.embedding)) !== row.vector_sha) {
          throw new PermanentError("vector_sha_mismatch", `the stored vector of chunk ${row.chunk_ord} does not match its vector_sha`);
        }
      }
      if (rows.length < VERIFY_PAGE) break;
      after = rows.at(-1)!.chunk_ord;
    }

    await ctx.faults.hit("commit.complete.before", { jobId: job.job_id });
    await ctx.fenced(async (tx) => {
      const promoted = await promote(tx.client, pinned.profileId, key);
      await tx.transition("complete", { detail: { chunks, vectors, promoted, profile_id: pinned.profileId, progress: job.progress } });
      await enqueueForOtherProfiles(tx.client, job.job_id, job.document_id, pinned.profileId);
    });
    await ctx.faults.hit("commit.complete.after", { jobId: job.job_id });
  },
};

/**
 * Make `document_chunks` (pgvector, when that table exists) hold exactly this run's vectors for
 * the document in the job's profile: the profile's rows of another model or of chunks no longer
 * current are deleted (a document is never searchable under two models in one profile), the rest
 * are upserted. Other profiles' rows are not touched. Re-running it changes nothing. Returns the
 * rows written (0 when they were already there).
 */
async function promote(client: import("pg").PoolClient, profileId: string, key: unknown[]): Promise<number> {
  const { rows } = await client.query<{ exists: boolean }>("SELECT to_regclass('upload_pipeline.document_chunks') IS NOT NULL AS exists");
  if (!rows[0]?.exists) return 0;
  await client.query(
    `DELETE FROM upload_pipeline.document_chunks d
      WHERE d.document_id = $1 AND d.profile_id = $5
        AND (d.embed_model <> $4 OR NOT EXISTS (
              SELECT 1 FROM upload_pipeline.document_chunk_buffer c
               WHERE c.chunk_id = d.chunk_id AND c.chunker_name = $2 AND c.chunker_version = $3))`,
    [...key.slice(0, 4), profileId],
  );
  const written = await client.query(
    `INSERT INTO upload_pipeline.document_chunks (profile_id, chunk_id, document_id, chunk_ord, text, meta, embed_model, embedding)
     SELECT $6, c.chunk_id, c.document_id, c.chunk_ord, c.text, c.meta, v.embed_model, v.embedding::vector
       FROM upload_pipeline.document_chunk_buffer c
       JOIN upload_pipeline.document_vector_buffer v ON v.chunk_id = c.chunk_id AND v.embed_model = $4 AND v.embed_version = $5
      WHERE c.document_id = $1 AND c.chunker_name = $2 AND c.chunker_version = $3
     ON CONFLICT (profile_id, chunk_id) DO UPDATE SET embedding = EXCLUDED.embedding, embed_model = EXCLUDED.embed_model
      WHERE document_chunks.embedding IS DISTINCT FROM EXCLUDED.embedding`,
    [...key, profileId],
  );
  return written.rowCount ?? 0;
}
