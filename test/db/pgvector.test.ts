/**
 * Migrations 0002 and 0007 and the finish stage's promotion against a real pgvector (PGlite with
 * its `vector` extension, over the wire protocol): the whole pipeline runs on it with the mocks,
 * then similarity search is checked under row-level security as PostgREST would run it.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { migrateModelMain } from "../../src/ops/migrateModel.ts";
import { startPgvectorDatabase } from "../support/pgvector.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";
import { asRole } from "../support/roles.ts";

let env: PipelineEnv;
const userA = randomUUID();
const userB = randomUUID();
let docsA: { documentId: string; jobId: string }[];
let docB: { documentId: string; jobId: string };

beforeAll(async () => {
  env = await startPipelineEnv({ db: await startPgvectorDatabase(), seed: 3 });
  const rng = mulberry32(9);
  docsA = [
    await env.upload({ content: markdownDocument(rng, "Alpha", 3_000), userId: userA }),
    await env.upload({ content: markdownDocument(rng, "Beta", 2_000), userId: userA }),
  ];
  docB = await env.upload({ content: markdownDocument(rng, "Gamma", 2_000), userId: userB });
  await runToComplete([...docsA, docB].map((d) => d.jobId));
}, 180_000);
afterAll(() => env?.close());

async function runToComplete(jobIds: string[], services = env.services): Promise<void> {
  const worker = env.worker({ concurrency: 1, services });
  await worker.start();
  const states = await waitForTerminal(env, jobIds, 120_000);
  await worker.stop();
  expect([...states.values()]).toEqual(jobIds.map(() => "complete"));
}

/** Every row of document_chunks, comparable across runs. */
async function snapshot() {
  const { rows } = await env.db.pool.query(
    `SELECT profile_id, chunk_id, document_id, chunk_ord, embed_model, embedding::text AS embedding, created_at
       FROM upload_pipeline.document_chunks ORDER BY profile_id, chunk_id`,
  );
  return rows;
}

function parseVector(text: string): number[] {
  return JSON.parse(text) as number[];
}

describe("pgvector, on a real vector extension", () => {
  it("ran 0002 and 0007: one HNSW index per model, never one over two models", async () => {
    const ext = await env.db.pool.query("SELECT extversion FROM pg_extension WHERE extname = 'vector'");
    expect(ext.rowCount).toBe(1);
    const { rows } = await env.db.pool.query<{ indexname: string; indexdef: string }>(
      "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'upload_pipeline' AND tablename = 'document_chunks' AND indexdef LIKE '%USING hnsw%'",
    );
    expect(rows.map((r) => r.indexname).sort()).toEqual([
      "document_chunks_hnsw_3_large_3072",
      "document_chunks_hnsw_3_small_1536",
      "document_chunks_hnsw_ada_002_1536",
    ]);
    for (const row of rows) expect(row.indexdef.match(/embed_model = '[^']+'/g)).toHaveLength(1);
  });

  it("the finish stage promoted every document's vectors, equal to the buffer's", async () => {
    const { rows } = await env.db.pool.query<{ buffered: number; promoted: number; equal: number }>(
      `SELECT (SELECT count(*)::int FROM upload_pipeline.document_vector_buffer) AS buffered,
              (SELECT count(*)::int FROM upload_pipeline.document_chunks) AS promoted,
              (SELECT count(*)::int FROM upload_pipeline.document_chunks d
                 JOIN upload_pipeline.document_vector_buffer v ON v.chunk_id = d.chunk_id AND v.embed_model = d.embed_model
                WHERE d.embedding = v.embedding::vector AND vector_dims(d.embedding) = 1536) AS equal`,
    );
    expect(rows[0]!.buffered).toBeGreaterThan(3);
    expect(rows[0]).toEqual({ buffered: rows[0]!.buffered, promoted: rows[0]!.buffered, equal: rows[0]!.buffered });
  });

  it("re-running promotion changes nothing", async () => {
    const before = await snapshot();
    await env.db.pool.query("UPDATE upload_pipeline.upload_jobs SET status = 'embeddings_stored' WHERE job_id = $1", [docsA[0]!.jobId]);
    await runToComplete([docsA[0]!.jobId]);
    expect(await snapshot()).toEqual(before);
    const { rows } = await env.db.pool.query(
      "SELECT detail->>'promoted' AS promoted FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status = 'complete' ORDER BY id",
      [docsA[0]!.jobId],
    );
    expect(rows.map((r) => Number(r.promoted))).toEqual([before.filter((r) => r.document_id === docsA[0]!.documentId).length, 0]);
  });

  it("a document re-embedded with another model within its profile is never searchable under two models", async () => {
    const doc = docsA[1]!;
    const others = (await snapshot()).filter((r) => r.document_id !== doc.documentId);
    // A job pinned to another model (a rolling deploy from before profiles): back to
    // chunks_stored with ada-002 pinned, within the `default` profile.
    await env.db.pool.query(
      `UPDATE upload_pipeline.upload_jobs SET status = 'chunks_stored', settings = settings || '{"embed_model": "text-embedding-ada-002", "embed_version": "d1536"}'
        WHERE job_id = $1`,
      [doc.jobId],
    );
    await runToComplete([doc.jobId]);

    const { rows } = await env.db.pool.query<{ embed_model: string; n: number }>(
      "SELECT embed_model, count(*)::int AS n FROM upload_pipeline.document_chunks WHERE document_id = $1 GROUP BY 1",
      [doc.documentId],
    );
    const chunks = await env.db.pool.query("SELECT 1 FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1", [doc.documentId]);
    expect(rows).toEqual([{ embed_model: "text-embedding-ada-002", n: chunks.rowCount }]);
    // The other documents keep their text-embedding-3-small rows untouched.
    expect((await snapshot()).filter((r) => r.document_id !== doc.documentId)).toEqual(others);

    const probe = await env.db.pool.query<{ embedding: string }>(
      "SELECT embedding::text FROM upload_pipeline.document_chunks WHERE document_id = $1 ORDER BY chunk_ord LIMIT 1",
      [doc.documentId],
    );
    const search = (filter: object) =>
      env.db.pool.query<{ document_id: string; embed_model: string }>("SELECT document_id, embed_model FROM upload_pipeline.match_chunks($1::vector, 50, $2)", [
        probe.rows[0]!.embedding,
        JSON.stringify(filter),
      ]);
    // Search serves the active profile's model only: the ada-002 rows are not mixed in.
    const small = await search({});
    expect(small.rows.length).toBeGreaterThan(0);
    expect(small.rows.every((r) => r.embed_model === "text-embedding-3-small" && r.document_id !== doc.documentId)).toBe(true);
    await expect(search({ embed_model: "text-embedding-ada-002" })).rejects.toThrow(
      /profile default embeds with text-embedding-3-small, not text-embedding-ada-002/,
    );
    // Put it back for the tests below.
    await env.db.pool.query("UPDATE upload_pipeline.upload_jobs SET status = 'chunks_stored', settings = NULL WHERE job_id = $1", [doc.jobId]);
    await runToComplete([doc.jobId]);
  }, 180_000);

  it("match_chunks ranks a planted nearest neighbour first, among the caller's documents only", async () => {
    // A chunk whose vector no other chunk shares (documents can repeat a heading line).
    const chunkOf = async (documentId: string) =>
      (
        await env.db.pool.query<{ chunk_id: string; embedding: string }>(
          `SELECT d.chunk_id, d.embedding::text FROM upload_pipeline.document_chunks d
            WHERE d.document_id = $1
              AND NOT EXISTS (SELECT 1 FROM upload_pipeline.document_chunks o WHERE o.chunk_id <> d.chunk_id AND o.embedding = d.embedding)
            ORDER BY d.chunk_ord LIMIT 1`,
          [documentId],
        )
      ).rows[0]!;
    // The planted neighbour: a chunk of user A's first document, and a query a small step away from it.
    const planted = await chunkOf(docsA[0]!.documentId);
    const rng = mulberry32(17);
    const query = `[${parseVector(planted.embedding)
      .map((x) => x + (rng() - 0.5) * 0.01)
      .join(",")}]`;
    const match = (role: "authenticated" | "service_role", sub: string, q: string) =>
      asRole(env.db.pool, role, sub, (c) =>
        c.query<{ chunk_id: string; document_id: string; similarity: number }>(
          "SELECT chunk_id, document_id, similarity FROM upload_pipeline.match_chunks($1::vector, 5)",
          [q],
        ),
      );

    const asA = await match("authenticated", userA, query);
    expect(asA.rows[0]!.chunk_id).toBe(planted.chunk_id);
    expect(asA.rows[0]!.similarity).toBeGreaterThan(0.99);
    expect(asA.rows[1]!.similarity).toBeLessThan(asA.rows[0]!.similarity);
    expect(asA.rows.every((r) => docsA.some((d) => d.documentId === r.document_id))).toBe(true);

    // User B's chunk is the exact nearest neighbour of its own vector, yet invisible to user A.
    const ofB = await chunkOf(docB.documentId);
    const aSearchingB = await match("authenticated", userA, ofB.embedding);
    expect(aSearchingB.rows.length).toBeGreaterThan(0);
    expect(aSearchingB.rows.some((r) => r.document_id === docB.documentId)).toBe(false);
    expect((await match("authenticated", userB, ofB.embedding)).rows[0]!.chunk_id).toBe(ofB.chunk_id);
    // The service role bypasses row-level security.
    expect((await match("service_role", userA, ofB.embedding)).rows[0]!.chunk_id).toBe(ofB.chunk_id);
  });

  it("match_chunks refuses a bad match_count or filter with a message naming it", async () => {
    const v = `[${new Array(1536).fill(0.1).join(",")}]`;
    await expect(env.db.pool.query("SELECT * FROM upload_pipeline.match_chunks($1::vector, 0)", [v])).rejects.toThrow(/match_count must be between 1 and 1000/);
    await expect(env.db.pool.query("SELECT * FROM upload_pipeline.match_chunks($1::vector, 5, '[]')", [v])).rejects.toThrow(/filter must be a JSON object/);
  });

  it("a model migration: its own HNSW index, search on the active profile until cutover, then on the new one", async () => {
    const cli = async (...argv: string[]) => {
      const lines: string[] = [];
      const code = await migrateModelMain(argv, { DATABASE_URL: env.db.url }, (l) => lines.push(l));
      return { code, out: lines.join("\n") };
    };
    const before = await snapshot();
    expect((await cli("start", "--to", "small-512", "--model", "text-embedding-3-small", "--dimensions", "512")).out).toContain("started: 3 documents queued");
    const index = await env.db.pool.query<{ indexdef: string }>("SELECT indexdef FROM pg_indexes WHERE indexname = 'document_chunks_hnsw_p_small_512'");
    expect(index.rows[0]!.indexdef).toMatch(
      /hnsw \(\(\(embedding\)::vector\(512\)\) vector_cosine_ops\) WHERE \(\(profile_id = 'small-512'::text\) AND \(embed_model = 'text-embedding-3-small'::text\) AND \(vector_dims\(embedding\) = 512\)\)/,
    );
    const jobs = await env.db.pool.query<{ job_id: string }>("SELECT job_id FROM upload_pipeline.upload_jobs WHERE profile_id = 'small-512'");
    await runToComplete(jobs.rows.map((r) => r.job_id));

    // Both profiles' rows side by side; the active profile's exactly as before.
    expect((await snapshot()).filter((r) => r.profile_id === "default")).toEqual(before);
    const widths = await env.db.pool.query(
      "SELECT profile_id, vector_dims(embedding) AS dims, count(*)::int AS n FROM upload_pipeline.document_chunks GROUP BY 1, 2 ORDER BY 1",
    );
    expect(widths.rows).toEqual([
      { profile_id: "default", dims: 1536, n: before.length },
      { profile_id: "small-512", dims: 512, n: before.length },
    ]);

    const query512 = (
      await env.db.pool.query<{ embedding: string }>(
        "SELECT embedding::text FROM upload_pipeline.document_chunks WHERE profile_id = 'small-512' AND document_id = $1 ORDER BY chunk_ord LIMIT 1",
        [docsA[0]!.documentId],
      )
    ).rows[0]!.embedding;
    const search = (q: string) =>
      asRole(env.db.pool, "authenticated", userA, (c) =>
        c.query<{ document_id: string; embed_model: string; similarity: number }>(
          "SELECT document_id, embed_model, similarity FROM upload_pipeline.match_chunks($1::vector, 3)",
          [q],
        ),
      );
    await expect(search(query512)).rejects.toThrow(/query_embedding has 512 dimensions; profile default embeds with text-embedding-3-small at 1536/);
    expect((await cli("cutover")).out).toBe("cut over: default → small-512; default is retired, its data kept");
    const hits = await search(query512);
    expect(hits.rows[0]!.similarity).toBeGreaterThan(0.999);
    expect(hits.rows.every((r) => r.embed_model === "text-embedding-3-small" && docsA.some((d) => d.documentId === r.document_id))).toBe(true);
    await expect(search(before[0]!.embedding)).rejects.toThrow(
      /query_embedding has 1536 dimensions; profile small-512 embeds with text-embedding-3-small at 512/,
    );
  }, 180_000);
});
