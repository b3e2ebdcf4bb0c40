import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectedEmbedding } from "../../mocks/index.ts";
import { vectorSha } from "../../src/ids.ts";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { fingerprint, startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({ seed: 11 });
});
afterAll(() => env.close());

describe("the pipeline, end to end", () => {
  it("takes 20 documents of mixed sizes from uploaded to complete with 2 workers × 4 slots", async () => {
    const rng = mulberry32(5);
    const docs = await Promise.all(
      Array.from({ length: 20 }, (_, i) => env.upload({ content: markdownDocument(rng, `Doc ${i}`, 500 + Math.floor(rng() * 12_000)), filename: `d${i}.md` })),
    );
    const workers = [env.worker({ concurrency: 4 }), env.worker({ concurrency: 4 })];
    await Promise.all(workers.map((w) => w.start()));
    const states = await waitForTerminal(
      env,
      docs.map((d) => d.jobId),
    );
    await Promise.all(workers.map((w) => w.stop()));
    expect([...states.values()].every((s) => s === "complete")).toBe(true);

    for (const doc of docs) {
      const rows = await fingerprint(env, doc.documentId);
      expect(rows.length).toBeGreaterThan(0);
      expect(rows.every((r) => r.n === 1)).toBe(true);
    }
    // Every stored vector is the embedding OpenAI (the mock) computes for that chunk's text.
    const { rows } = await env.db.pool.query<{ text: string; embedding: number[]; vector_sha: string }>(
      `SELECT c.text, v.embedding, v.vector_sha FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id) LIMIT 50`,
    );
    for (const row of rows) {
      expect(Float32Array.from(row.embedding)).toEqual(Float32Array.from(expectedEmbedding("text-embedding-3-small", row.text, 1536)));
      expect(vectorSha(row.embedding)).toBe(row.vector_sha);
    }
    // Counters equal buffer counts; cost follows the tokens.
    const jobs = await env.db.pool.query(
      `SELECT j.progress, (SELECT count(*)::int FROM upload_pipeline.document_chunk_buffer c WHERE c.document_id = j.document_id) AS chunks
         FROM upload_pipeline.upload_jobs j WHERE j.job_id = ANY($1)`,
      [docs.map((d) => d.jobId)],
    );
    let tokens = 0;
    for (const j of jobs.rows) {
      expect(j.progress).toMatchObject({ chunks_total: j.chunks, chunks_done: j.chunks, vectors_done: j.chunks });
      expect(Number(j.progress.cost_usd)).toBeCloseTo((j.progress.tokens * 0.02) / 1e6, 12);
      tokens += j.progress.tokens;
    }
    // No crash in this run, so every token the API billed was recorded exactly once.
    expect(tokens).toBeGreaterThan(0);
    expect(tokens).toBe(env.mocks.stats().openai.usage["text-embedding-3-small"]!.prompt_tokens);
  });
});
