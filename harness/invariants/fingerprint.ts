import { CHUNKER_NAME, CHUNKER_VERSION } from "../../src/chunking/markdownChunker.ts";
import type { Db } from "./queries.ts";
import type { Fingerprint } from "./types.ts";

export interface FingerprintOptions {
  /** Defaults to the production chunker. */
  chunker?: { name: string; version: string };
  /** Only vectors of this model and version; without it, every vector (ordered by ord, model, version). */
  embed?: { model: string; version: string };
}

/**
 * The fingerprints of `documentIds` in a finished database: chunk ids, `chunk_sha` and
 * `vector_sha` in `chunk_ord` order. Take them from a crash-free reference run and pass them as
 * `reference` to `checkInvariants` for the faulty run of the same corpus.
 *
 * @example
 * const reference = await fingerprint(referencePool, uploadedIds, { embed: { model, version } });
 */
export async function fingerprint(db: Db, documentIds: readonly string[], opts: FingerprintOptions = {}): Promise<Map<string, Fingerprint>> {
  const chunker = opts.chunker ?? { name: CHUNKER_NAME, version: CHUNKER_VERSION };
  const chunks = await db.query<{ document_id: string; chunk_id: string; chunk_sha: string }>(
    `SELECT document_id, chunk_id, chunk_sha FROM upload_pipeline.document_chunk_buffer
      WHERE document_id = ANY($1::uuid[]) AND chunker_name = $2 AND chunker_version = $3
      ORDER BY document_id, chunk_ord, chunk_id`,
    [documentIds, chunker.name, chunker.version],
  );
  const vectors = await db.query<{ document_id: string; vector_sha: string }>(
    `SELECT c.document_id, v.vector_sha FROM upload_pipeline.document_vector_buffer v
       JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
      WHERE c.document_id = ANY($1::uuid[]) AND c.chunker_name = $2 AND c.chunker_version = $3
        AND ($4::text IS NULL OR (v.embed_model = $4 AND v.embed_version = $5))
      ORDER BY c.document_id, c.chunk_ord, v.embed_model, v.embed_version`,
    [documentIds, chunker.name, chunker.version, opts.embed?.model ?? null, opts.embed?.version ?? null],
  );
  const result = new Map<string, Fingerprint>(documentIds.map((id) => [id, { chunkIds: [], chunkShas: [], vectorShas: [] }]));
  for (const row of chunks.rows) {
    const fp = result.get(row.document_id)!;
    fp.chunkIds.push(row.chunk_id);
    fp.chunkShas.push(row.chunk_sha);
  }
  for (const row of vectors.rows) result.get(row.document_id)!.vectorShas.push(row.vector_sha);
  return result;
}
