/**
 * Jepsen-style accounting of what a run did to the data, for every chunk and vector: lost,
 * duplicated, recovered (present and right after a kill interrupted its document's job),
 * unexpected; and the external work repeated beyond a clean run (LlamaParse jobs, embedding
 * inputs and tokens: money).
 */
import type { Db } from "./invariants/queries.ts";
import type { MockStatsSnapshot } from "../mocks/index.ts";
import type { Fingerprint } from "./invariants/index.ts";
import { takenOverJobs } from "./reachability.ts";

export interface JepsenCounts {
  chunks: { expected: number; stored: number; lost: number; duplicated: number; recovered: number; unexpected: number };
  vectors: { expected: number; stored: number; lost: number; duplicated: number; recovered: number; unexpected: number };
  /** Work the services did (and billed) beyond one pass per document. */
  repeated: { parseJobs: number; embeddingInputs: number; embeddingTokens: number };
}

/**
 * Counts against the reference run's fingerprints when there is one (else against the run's own
 * rows, so only duplicates and repeated work can show). Only documents expected to complete
 * are expected to have chunks and vectors.
 */
export async function jepsenCounts(
  pool: Db,
  run: { documentIds: readonly string[]; completeIds: readonly string[]; mockStats: MockStatsSnapshot; killedWorkers: readonly string[] },
  reference: Map<string, Fingerprint> | undefined,
): Promise<JepsenCounts> {
  // `embeddings`: the (model, version) pairs a chunk has vectors in: one per embedding profile
  // (a model migration adds one); rows beyond those are duplicates.
  const { rows: chunks } = await pool.query<{ document_id: string; chunk_id: string; vectors: number; embeddings: number }>(
    `SELECT c.document_id, c.chunk_id,
            (SELECT count(*)::int FROM upload_pipeline.document_vector_buffer v WHERE v.chunk_id = c.chunk_id) AS vectors,
            (SELECT count(DISTINCT (v.embed_model, v.embed_version))::int FROM upload_pipeline.document_vector_buffer v WHERE v.chunk_id = c.chunk_id) AS embeddings
       FROM upload_pipeline.document_chunk_buffer c WHERE c.document_id = ANY($1::uuid[])`,
    [run.documentIds],
  );
  // Rows beyond the first at one position of a document: a chunk written twice.
  const { rows: duplicates } = await pool.query<{ n: number }>(
    `SELECT coalesce(sum(n - 1), 0)::int AS n FROM (
       SELECT count(*) AS n FROM upload_pipeline.document_chunk_buffer
        WHERE document_id = ANY($1::uuid[]) GROUP BY document_id, chunk_ord) positions`,
    [run.documentIds],
  );
  const { rows: tokens } = await pool.query<{ tokens: string }>(
    `SELECT coalesce(sum((progress->>'tokens')::bigint), 0) AS tokens FROM upload_pipeline.upload_jobs WHERE document_id = ANY($1::uuid[])`,
    [run.documentIds],
  );
  const stored = new Set(chunks.map((c) => c.chunk_id));
  const withVector = new Set(chunks.filter((c) => c.vectors > 0).map((c) => c.chunk_id));
  const expectedIds = new Set<string>();
  for (const id of run.completeIds)
    for (const chunk of reference?.get(id)?.chunkIds ?? chunks.filter((c) => c.document_id === id).map((c) => c.chunk_id)) expectedIds.add(chunk);
  const takenOver = await takenOverJobs(pool, run.documentIds, run.killedWorkers);
  const recoveredChunks = chunks.filter((c) => takenOver.has(c.document_id) && expectedIds.has(c.chunk_id));
  const usage = Object.values(run.mockStats.openai.usage);
  const inputs = usage.reduce((a, u) => a + u.inputs, 0);
  const billed = usage.reduce((a, u) => a + u.prompt_tokens, 0);
  return {
    chunks: {
      expected: expectedIds.size,
      stored: chunks.length,
      lost: [...expectedIds].filter((id) => !stored.has(id)).length,
      duplicated: duplicates[0]?.n ?? 0,
      recovered: recoveredChunks.length,
      unexpected: chunks.filter((c) => !expectedIds.has(c.chunk_id) && run.completeIds.includes(c.document_id)).length,
    },
    vectors: {
      expected: expectedIds.size,
      stored: chunks.reduce((a, c) => a + c.vectors, 0),
      lost: [...expectedIds].filter((id) => !withVector.has(id)).length,
      duplicated: chunks.reduce((a, c) => a + Math.max(0, c.vectors - c.embeddings), 0),
      recovered: recoveredChunks.filter((c) => c.vectors > 0).length,
      unexpected: chunks.filter((c) => c.vectors > 0 && !expectedIds.has(c.chunk_id) && run.completeIds.includes(c.document_id)).length,
    },
    repeated: {
      parseJobs: Math.max(0, run.mockStats.llamaparse.jobsCreated - run.documentIds.length),
      embeddingInputs: Math.max(0, inputs - chunks.reduce((a, c) => a + c.embeddings, 0)),
      embeddingTokens: Math.max(0, billed - Number(tokens[0]?.tokens ?? 0)),
    },
  };
}

/** One line: lost/duplicated/recovered/unexpected chunks/vectors and the repeated work. */
export function formatJepsen(j: JepsenCounts): string {
  const pair = (k: "lost" | "duplicated" | "recovered" | "unexpected") => `${k} ${j.chunks[k]}/${j.vectors[k]}`;
  return `chunks/vectors ${["lost", "duplicated", "recovered", "unexpected"].map((k) => pair(k as "lost")).join(", ")}; repeated work: ${j.repeated.parseJobs} parse jobs, ${j.repeated.embeddingInputs} embedding inputs (${j.repeated.embeddingTokens} tokens)`;
}

/** The counts of several runs added up. */
export function sumJepsen(all: readonly JepsenCounts[]): JepsenCounts {
  const add = <T extends Record<string, number>>(pick: (j: JepsenCounts) => T): T =>
    all.reduce((acc, j) => Object.fromEntries(Object.entries(pick(j)).map(([k, v]) => [k, (acc[k] ?? 0) + v])) as T, {} as T);
  return { chunks: add((j) => j.chunks), vectors: add((j) => j.vectors), repeated: add((j) => j.repeated) };
}
