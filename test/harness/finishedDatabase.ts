/**
 * A small "finished" database written by hand, row by row, the way a correct run leaves it:
 * documents, complete (or expectedly failed) jobs with their progress, chunk rows with
 * deterministic ids and hashes, vectors from a stand-in embedding, and valid event paths with
 * a lease takeover. The planted-fault tests corrupt a copy of it inside a transaction.
 */
import { createHash, randomUUID } from "node:crypto";
import type pg from "pg";
import { afterAll, beforeAll } from "vitest";
import { CHUNKER_NAME, CHUNKER_VERSION } from "../../src/chunking/markdownChunker.ts";
import { costUsd } from "../../src/clients/tokens.ts";
import { chunkId, documentId, jobId, sha256, vectorSha } from "../../src/ids.ts";
import type { InvariantInput } from "../../harness/invariants/index.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";

export const EMBED = { model: "text-embedding-3-small", version: "1", dimensions: 8 } as const;

/** Stand-in for the mock's deterministic embedding: bytes of sha256(model, text) scaled to ±0.5. */
export function standInEmbedding(model: string, input: string, dimensions: number): Float32Array {
  const digest = createHash("sha256").update(model).update("\u0000").update(input).digest();
  return Float32Array.from({ length: dimensions }, (_, i) => digest[i % digest.length]! / 255 - 0.5);
}

export interface FinishedDocument {
  documentId: string;
  jobId: string;
  chunkIds: string[];
  /** Lease tokens of the claims, in order. */
  tokens: string[];
  /** Event ids in order. */
  eventIds: string[];
}

export interface Finished {
  complete: FinishedDocument[];
  poison: FinishedDocument;
  /** Mock usage consistent with the rows. */
  tokens: number;
  input: InvariantInput;
}

const TOKENS_PER_CHUNK = 7;

async function event(db: pg.Pool, job: string, from: string | null, to: string, actor: string, lease?: { worker: string; token: string }): Promise<string> {
  const { rows } = await db.query<{ id: string }>(
    `INSERT INTO upload_pipeline.job_events (job_id, from_status, to_status, worker_id, lease_token, attempt, detail)
     VALUES ($1, $2, $3, $4, $5, 0, jsonb_build_object('actor', $6::text)) RETURNING id::text AS id`,
    [job, from, to, lease?.worker ?? actor, lease?.token ?? null, actor],
  );
  return rows[0]!.id;
}

async function insertDocument(db: pg.Pool, content: string): Promise<{ documentId: string; jobId: string }> {
  const userId = randomUUID();
  const fileSha = sha256(content);
  const docId = documentId(userId, fileSha);
  const id = jobId(docId);
  await db.query(
    `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
     VALUES ($1, $2, 'doc.md', 'text/markdown', $3, $4, $5)`,
    [docId, userId, Buffer.byteLength(content), fileSha, `${userId}/raw/${docId}/doc.md`],
  );
  await db.query(`INSERT INTO upload_pipeline.upload_jobs (job_id, document_id, status, correlation_id) VALUES ($1, $2, 'uploaded', $3)`, [
    id,
    docId,
    randomUUID(),
  ]);
  return { documentId: docId, jobId: id };
}

/** A document that went all the way, with a lease takeover in the middle of embedding. */
async function completeDocument(db: pg.Pool, content: string, texts: string[]): Promise<FinishedDocument> {
  const { documentId: docId, jobId: job } = await insertDocument(db, content);
  const chunkIds = texts.map((_, ord) => chunkId(docId, CHUNKER_NAME, CHUNKER_VERSION, ord));
  for (const [ord, text] of texts.entries()) {
    await db.query(
      `INSERT INTO upload_pipeline.document_chunk_buffer (chunk_id, document_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha, token_count)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [chunkIds[ord], docId, CHUNKER_NAME, CHUNKER_VERSION, ord, text, sha256(text), TOKENS_PER_CHUNK],
    );
    const vector = standInEmbedding(EMBED.model, text, EMBED.dimensions);
    await db.query(
      `INSERT INTO upload_pipeline.document_vector_buffer (chunk_id, embed_model, embed_version, embedding, vector_sha, batch_id)
       VALUES ($1, $2, $3, $4::real[], $5, $6)`,
      [chunkIds[ord], EMBED.model, EMBED.version, Array.from(vector), vectorSha(vector), randomUUID()],
    );
  }
  const tokens = texts.length * TOKENS_PER_CHUNK;
  await db.query(`UPDATE upload_pipeline.upload_jobs SET status = 'complete', progress = $2::jsonb WHERE job_id = $1`, [
    job,
    JSON.stringify({
      chunks_total: texts.length,
      chunks_done: texts.length,
      vectors_total: texts.length,
      vectors_done: texts.length,
      batches_done: 1,
      tokens,
      cost_usd: costUsd(EMBED.model, tokens),
    }),
  ]);
  const [t1, t2, t3] = [randomUUID(), randomUUID(), randomUUID()];
  const w1 = { worker: "w1", token: t1 };
  const w2 = { worker: "w2", token: t2 };
  const w1again = { worker: "w1", token: t3 }; // w2 died; w1 took the job over with a new claim
  const ids = [
    await event(db, job, null, "uploaded", "api"),
    await event(db, job, "uploaded", "parse_queued", "worker", w1),
    await event(db, job, "parse_queued", "parsed", "webhook"),
    await event(db, job, "parsed", "parse_validated", "worker", w2),
    await event(db, job, "parse_validated", "chunking", "worker", w2),
    await event(db, job, "chunking", "chunks_stored", "worker", w2),
    await event(db, job, "chunks_stored", "embedding_queued", "worker", w2),
    await event(db, job, "embedding_queued", "embedding_in_progress", "worker", w2),
    await event(db, job, "embedding_in_progress", "embeddings_stored", "worker", w1again),
    await event(db, job, "embeddings_stored", "complete", "worker", w1again),
  ];
  return { documentId: docId, jobId: job, chunkIds, tokens: [t1, t2, t3], eventIds: ids };
}

/** A poison document: LlamaParse reported failure, the job is dead-lettered in failed_parse. */
async function poisonDocument(db: pg.Pool): Promise<FinishedDocument> {
  const { documentId: docId, jobId: job } = await insertDocument(db, "%PDF-garbage");
  await db.query("UPDATE upload_pipeline.upload_jobs SET status = 'failed_parse' WHERE job_id = $1", [job]);
  const token = randomUUID();
  const ids = [
    await event(db, job, null, "uploaded", "api"),
    await event(db, job, "uploaded", "parse_queued", "worker", { worker: "w1", token }),
    await event(db, job, "parse_queued", "failed_parse", "webhook"),
  ];
  return { documentId: docId, jobId: job, chunkIds: [], tokens: [token], eventIds: ids };
}

export async function buildFinishedDatabase(db: pg.Pool): Promise<Finished> {
  const a = await completeDocument(db, "# A\n\nalpha", ["# A", "alpha one", "alpha two"]);
  const b = await completeDocument(db, "# B\n\nbeta", ["# B", "beta"]);
  const poison = await poisonDocument(db);
  const tokens = (3 + 2) * TOKENS_PER_CHUNK;
  return {
    complete: [a, b],
    poison,
    tokens,
    input: {
      documentIds: [a.documentId, b.documentId, poison.documentId],
      expected: new Map([[poison.documentId, "failed_parse"]]),
      expectedEmbedding: standInEmbedding,
      embed: { ...EMBED },
      mockUsage: { promptTokensByModel: { [EMBED.model]: tokens } },
      crashesHappened: false,
    },
  };
}

/** A test file's own finished database: built before its tests run, dropped after them. */
export function finishedDatabaseForFile(): { readonly db: TestDatabase; readonly run: Finished } {
  const file = {} as { db: TestDatabase; run: Finished };
  beforeAll(async () => {
    file.db = await createTestDatabase();
    file.run = await buildFinishedDatabase(file.db.pool);
  });
  afterAll(() => dropQuietly(file.db));
  return file;
}

/**
 * `db.drop()` without a stray unhandled error: `pool.end()` resolves before its sockets have
 * closed, so `DROP DATABASE … WITH (FORCE)` can terminate them (57P01) and the pool re-emits
 * that on an idle client with no listener. Those errors are expected here; ignore them.
 */
export function dropQuietly(db: { pool: pg.Pool; drop(): Promise<void> }): Promise<void> {
  db.pool.on("error", () => {});
  return db.drop();
}
