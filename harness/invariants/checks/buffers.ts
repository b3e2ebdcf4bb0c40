/**
 * SPEC §8.2 (rows and ids) and §8.3 (vectors), in one pass over each document's buffers:
 * no duplicate chunk or vector rows, chunk ords 0..n-1, deterministic chunk ids, `chunk_sha` and
 * `vector_sha` recomputed from the stored text and floats, equality with a crash-free reference
 * run, and every vector equal to the mock's embedding of its chunk.
 */
import { chunkId, sha256, vectorSha } from "../../../src/ids.ts";
import { Violations } from "../collector.ts";
import { loadChunks, loadVectors, type ChunkRow, type Db } from "../queries.ts";
import type { Fingerprint, InvariantInput } from "../types.ts";

/** Chunks whose vectors are read (and compared) per query. */
const VECTOR_PAGE = 500;

export interface BufferChecks {
  duplicates: Violations;
  ids: Violations;
  reference: Violations;
  vectors: Violations;
}

export interface DocumentCounts {
  /** Chunk rows of the configured chunker. */
  chunkRows: number;
  /** Vector rows of the configured model and version on those chunks. */
  vectorRows: number;
}

export function newBufferChecks(): BufferChecks {
  return {
    duplicates: new Violations("no_duplicate_or_missing_rows", "§8.2"),
    ids: new Violations("ids_and_hashes_deterministic", "§8.2"),
    reference: new Violations("matches_reference_run", "§8.2"),
    vectors: new Violations("vectors_match_mock", "§8.3"),
  };
}

interface DocumentContext {
  documentId: string;
  /** The job's status, or null when it has none. */
  status: string | null;
}

export async function checkDocumentBuffers(
  db: Db,
  doc: DocumentContext,
  input: InvariantInput,
  chunker: { name: string; version: string },
  out: BufferChecks,
): Promise<DocumentCounts> {
  const { documentId } = doc;
  const { model, version, dimensions } = input.embed;
  const tolerance = input.vectorTolerance ?? 1e-6;
  const chunks = (await loadChunks(db, documentId)).filter((c) => c.chunker_name === chunker.name && c.chunker_version === chunker.version);

  // Chunk rows: one per ord, ords 0..n-1, ids and hashes recomputed.
  const byOrd = new Map<number, ChunkRow[]>();
  for (const c of chunks) {
    const rows = byOrd.get(c.chunk_ord);
    if (rows) rows.push(c);
    else byOrd.set(c.chunk_ord, [c]);
    const id = chunkId(documentId, chunker.name, chunker.version, c.chunk_ord);
    if (c.chunk_id !== id) out.ids.add(`chunk ${c.chunk_id} (document ${documentId}, ord ${c.chunk_ord}): chunk_id should be ${id}`);
    const sha = sha256(c.text);
    if (c.chunk_sha !== sha)
      out.ids.add(`chunk ${c.chunk_id} (document ${documentId}, ord ${c.chunk_ord}): chunk_sha ${c.chunk_sha} but sha256(text) is ${sha}`);
  }
  for (const [ord, rows] of byOrd) {
    if (rows.length > 1) out.duplicates.add(`document ${documentId}: duplicate chunk rows for ord ${ord}: ${rows.map((r) => r.chunk_id).join(", ")}`);
  }
  const missing: number[] = [];
  for (let ord = 0; ord < byOrd.size; ord++) if (!byOrd.has(ord)) missing.push(ord);
  if (missing.length > 0) {
    out.duplicates.add(
      `document ${documentId}: chunk ords are not 0..${byOrd.size - 1}: missing ${missing.slice(0, 10).join(", ")}${missing.length > 10 ? ", …" : ""}`,
    );
  }

  // Vector rows, a page of ords at a time.
  const maxOrd = chunks.reduce((m, c) => Math.max(m, c.chunk_ord), -1);
  const chunkKeys = new Set(chunks.map((c) => c.chunk_id));
  const vectorsPerChunk = new Map<string, number>();
  const vectorShaByOrd: string[] = [];
  let vectorRows = 0;
  for (let lo = 0; lo <= maxOrd; lo += VECTOR_PAGE) {
    for (const row of await loadVectors(db, documentId, lo, lo + VECTOR_PAGE)) {
      if (!chunkKeys.has(row.chunk_id)) continue; // another chunker's rows: not this run's concern
      const where = `vector of chunk ${row.chunk_id} (document ${documentId}, ord ${row.chunk_ord}, ${row.embed_model}/${row.embed_version})`;
      const stored = Float32Array.from(row.embedding);
      const sha = vectorSha(stored);
      if (row.vector_sha !== sha) out.ids.add(`${where}: vector_sha ${row.vector_sha} but sha256(float32 bytes) is ${sha}`);
      const otherProfile = input.profile?.otherEmbeds.some((e) => e.model === row.embed_model && e.version === row.embed_version);
      if (otherProfile) continue; // checked in that profile's own pass
      if (row.embed_model !== model || row.embed_version !== version) {
        out.duplicates.add(`${where}: unexpected model/version, the run embeds with ${model}/${version}`);
        continue;
      }
      vectorRows += 1;
      const seen = (vectorsPerChunk.get(row.chunk_id) ?? 0) + 1;
      vectorsPerChunk.set(row.chunk_id, seen);
      if (seen === 2) out.duplicates.add(`${where}: duplicate vector rows for one (chunk, model, version)`);
      vectorShaByOrd[row.chunk_ord] ??= row.vector_sha;
      const mismatch = compareVector(stored, input.expectedEmbedding(model, row.text, dimensions), tolerance);
      if (mismatch) out.vectors.add(`${where} differs from the mock's embedding of its text: ${mismatch}`);
    }
  }

  if (doc.status === "complete") {
    if (chunks.length === 0) out.duplicates.add(`document ${documentId} is complete but has no chunk rows`);
    for (const c of chunks) {
      if (!vectorsPerChunk.has(c.chunk_id))
        out.duplicates.add(`document ${documentId} is complete but chunk ${c.chunk_id} (ord ${c.chunk_ord}) has no ${model}/${version} vector`);
    }
    const reference = input.reference?.get(documentId);
    if (reference) {
      const actual: Fingerprint = {
        chunkIds: chunks.map((c) => c.chunk_id),
        chunkShas: chunks.map((c) => c.chunk_sha),
        vectorShas: vectorShaByOrd.filter((s) => s !== undefined),
      };
      for (const line of compareFingerprints(documentId, actual, reference)) out.reference.add(line);
    }
  }
  return { chunkRows: chunks.length, vectorRows };
}

/** Where a stored vector departs from the expected one, or null when equal within `tolerance`. */
export function compareVector(stored: Float32Array, expected: Float32Array | readonly number[], tolerance: number): string | null {
  if (stored.length !== expected.length) return `${stored.length} dimensions, expected ${expected.length}`;
  let worst = 0;
  let at = -1;
  for (let i = 0; i < stored.length; i++) {
    // Compare in float32: the mock answers float32, so an exact match is the normal case.
    const d = Math.abs(stored[i]! - Math.fround(expected[i]!));
    if (Number.isNaN(d)) return `component ${i} is not a number`;
    if (d > worst) {
      worst = d;
      at = i;
    }
  }
  return worst > tolerance ? `max |Δ| = ${worst} at component ${at} (tolerance ${tolerance})` : null;
}

/** Differences between a document's fingerprint and the reference run's: one line per list that differs. */
export function compareFingerprints(documentId: string, actual: Fingerprint, reference: Fingerprint): string[] {
  const lines: string[] = [];
  const lists = [
    ["chunk ids", actual.chunkIds, reference.chunkIds],
    ["chunk_sha", actual.chunkShas, reference.chunkShas],
    ["vector_sha", actual.vectorShas, reference.vectorShas],
  ] as const;
  for (const [label, got, want] of lists) {
    if (got.length !== want.length) {
      lines.push(`document ${documentId}: ${got.length} ${label} but the reference run has ${want.length}`);
      continue;
    }
    const i = got.findIndex((x, k) => x !== want[k]);
    if (i >= 0) lines.push(`document ${documentId}: ${label} differ from the reference run at ord ${i} (${got[i]} ≠ ${want[i]})`);
  }
  return lines;
}
