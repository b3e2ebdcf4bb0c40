/**
 * Deterministic ids and content hashes (SPEC §3). Every id the pipeline mints is a UUIDv5 over a
 * canonical, lower-cased, colon-separated string, so a re-run, a resumed job or a second worker
 * computes the same id and `ON CONFLICT DO NOTHING` makes the write idempotent.
 */
import { createHash } from "node:crypto";
import { v5 as uuidv5 } from "uuid";

export const ID_NAMESPACE = "6c8a1e6e-1f0b-4aa8-9f0a-1a7c2e6f2b42";

/** UUIDv5 of the canonical form of `parts`: each lower-cased, joined with ":". */
export function deterministicId(...parts: Array<string | number>): string {
  return uuidv5(parts.map((p) => String(p).toLowerCase()).join(":"), ID_NAMESPACE);
}

/** `uuidv5(ns, "{user_id}:{file_sha256}")`: the same user uploading the same bytes gets the same document. */
export function documentId(userId: string, fileSha256: string): string {
  return deterministicId(userId, fileSha256);
}

/** One job per document: `uuidv5(ns, "{document_id}:job")`. */
export function jobId(documentId: string): string {
  return deterministicId(documentId, "job");
}

/** `uuidv5(ns, "{document_id}:{chunker_name}:{chunker_version}:{chunk_ord}")`. */
export function chunkId(documentId: string, chunkerName: string, chunkerVersion: string, chunkOrd: number): string {
  return deterministicId(documentId, chunkerName, chunkerVersion, chunkOrd);
}

/** Hex SHA-256 of text (UTF-8) or bytes. */
export function sha256(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** `vector_sha`: SHA-256 of the embedding's float32 bytes (little-endian, as stored in memory). */
export function vectorSha(embedding: Float32Array | readonly number[]): string {
  const f32 = embedding instanceof Float32Array ? embedding : Float32Array.from(embedding);
  return sha256(new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength));
}
