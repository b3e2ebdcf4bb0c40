/**
 * `chunks_stored → embedding_queued → embedding_in_progress → embeddings_stored`: page through
 * the chunks that have no vector yet, embed them in micro-batches (≤ 256 inputs and within the
 * per-request token cap), and commit each batch's vectors together with the progress counters in
 * one fenced transaction. A resumed job therefore sends only chunks without a vector: a batch is
 * either wholly stored or not at all. Bulk jobs go through the Batch API instead (`embedBatch.ts`).
 */
import { costUsd } from "../clients/tokens.ts";
import { PermanentError } from "../errors.ts";
import { float4ArrayParam } from "../db/float4Array.ts";
import { deterministicId, vectorSha } from "../ids.ts";
import type { Stage, StageContext } from "../worker/stage.ts";
import { embedViaBatchApi, usesBatchApi } from "./embedBatch.ts";
import type { PipelineServices } from "./services.ts";
import { jobSettings, type JobSettings } from "./settings.ts";

/**
 * One batch of vectors and the job's counters, in one statement (so in one transaction):
 * `vectors_done` grows by the rows this insert wrote rather than by a count(*) over the
 * document's buffers after every batch, which made embedding O(N²) in a document's chunks.
 * Each vector is its own binary `real[]` parameter (`float4ArrayParam`), so the statement has a
 * `VALUES` row per vector, from parameter $7 on.
 */
function insertVectorsSql(rows: number): string {
  const values = Array.from({ length: rows }, (_, i) => `($${7 + 3 * i}::uuid, $${8 + 3 * i}::real[], $${9 + 3 * i}::text)`);
  return `
  WITH written AS (
    INSERT INTO upload_pipeline.document_vector_buffer (chunk_id, embed_model, embed_version, embedding, vector_sha, batch_id)
    SELECT v.chunk_id, $2, $3, v.embedding, v.vector_sha, $4
      FROM (VALUES ${values.join(", ")}) AS v(chunk_id, embedding, vector_sha)
    ON CONFLICT DO NOTHING
    RETURNING 1)
  UPDATE upload_pipeline.upload_jobs SET progress = progress || jsonb_build_object(
      'vectors_done', coalesce((progress->>'vectors_done')::int, 0) + (SELECT count(*) FROM written),
      'batches_done', coalesce((progress->>'batches_done')::int, 0) + 1,
      'tokens', coalesce((progress->>'tokens')::bigint, 0) + $5,
      'cost_usd', coalesce((progress->>'cost_usd')::numeric, 0) + $6::numeric)
   WHERE job_id = $1`;
}

interface PendingChunk {
  chunk_id: string;
  chunk_ord: number;
  text: string;
  token_count: number;
}

export const embedChunks: Stage<PipelineServices> = {
  name: "embed",
  handles: ["chunks_stored", "embedding_queued", "embedding_in_progress"],
  async run(ctx) {
    if (ctx.job.status === "chunks_stored") {
      await ctx.transition("embedding_queued");
      await ctx.faults.hit("commit.embedding_queued.after", { jobId: ctx.job.job_id });
    }
    if (ctx.job.status === "embedding_queued") await ctx.transition("embedding_in_progress");
    // The model and dimensions the job began with, whatever this worker is configured with.
    const pinned = await jobSettings(ctx);
    if (await usesBatchApi(ctx)) {
      const outcome = await embedViaBatchApi(ctx, pinned, () => embedSynchronously(ctx, pinned));
      if (outcome) return outcome;
      await ctx.transition("embeddings_stored", { detail: { via: "batch_api" } });
      return;
    }
    const batchNo = await embedSynchronously(ctx, pinned);
    await ctx.transition("embeddings_stored", { detail: { batches_this_run: batchNo } });
  },
};

/** Embed every pending chunk through `/v1/embeddings`, one committed micro-batch at a time; returns how many batches ran. */
async function embedSynchronously(ctx: StageContext<PipelineServices>, pinned: JobSettings): Promise<number> {
  const { embedder } = ctx.services;
  const target = { model: pinned.embedModel, dimensions: pinned.embedDimensions };
  let batchNo = 0;
  let after = -1; // every chunk up to here has its vector: the next page starts past it
  for (;;) {
    ctx.checkpoint(); // a shutdown stops here, between batches: the stored ones are kept
    const batch = await nextBatch(ctx, pinned, after);
    if (batch.length === 0) break;
    after = batch.at(-1)!.chunk_ord;
    batchNo += 1;
    const inputs = batch.map((c) => c.text);
    if (inputs.some((t) => t.length === 0)) throw new PermanentError("empty_chunk", "a stored chunk is empty; the embeddings API refuses empty inputs");
    await ctx.faults.hit("call.openai.embed.before", { jobId: ctx.job.job_id, batch: batchNo, inputs: inputs.length });
    await ctx.checkLease(); // a billed call: not after our lease has run out
    const result = await embedder.embed(inputs, ctx.signal, { target });
    await ctx.faults.hit("call.openai.embed.after", { jobId: ctx.job.job_id, batch: batchNo });
    if (result.vectors.length !== batch.length) {
      throw new PermanentError("embedding_count_mismatch", `asked for ${batch.length} embeddings, got ${result.vectors.length}`);
    }
    const tokens = result.usage.totalTokens;
    const batchId = deterministicId(ctx.job.document_id, "batch", pinned.embedModel, pinned.embedVersion, batch[0]!.chunk_ord);
    await ctx.faults.hit("commit.vectors.before", { jobId: ctx.job.job_id, batch: batchNo });
    const rows = batch.flatMap((c, i) => [c.chunk_id, float4ArrayParam(result.vectors[i]!), vectorSha(result.vectors[i]!)]);
    await ctx.fenced(({ client }) =>
      client.query(insertVectorsSql(batch.length), [
        ctx.job.job_id,
        pinned.embedModel,
        pinned.embedVersion,
        batchId,
        tokens,
        costUsd(pinned.embedModel, tokens).toFixed(10),
        ...rows,
      ]),
    );
    await ctx.faults.hit("commit.vectors.after", { jobId: ctx.job.job_id, batch: batchNo });
    ctx.counts.batches = batchNo;
    ctx.counts.inputs = (ctx.counts.inputs ?? 0) + batch.length;
    ctx.log.debug({ batch: batchNo, inputs: batch.length, tokens }, "batch embedded");
  }
  return batchNo;
}

/** The next chunks after `after` without a vector, in order: ≤ embedBatchSize inputs and ≤ the token cap. */
async function nextBatch(ctx: StageContext<PipelineServices>, pinned: JobSettings, after: number): Promise<PendingChunk[]> {
  const { settings } = ctx.services;
  const { rows } = await ctx.pool.query<PendingChunk>(
    `SELECT c.chunk_id, c.chunk_ord, c.text, c.token_count
       FROM upload_pipeline.document_chunk_buffer c
      WHERE c.document_id = $1 AND c.chunker_name = $2 AND c.chunker_version = $3 AND c.chunk_ord > $7
        AND NOT EXISTS (SELECT 1 FROM upload_pipeline.document_vector_buffer v
                         WHERE v.chunk_id = c.chunk_id AND v.embed_model = $4 AND v.embed_version = $5)
      ORDER BY c.chunk_ord
      LIMIT $6`,
    [ctx.job.document_id, pinned.chunkerName, pinned.chunkerVersion, pinned.embedModel, pinned.embedVersion, settings.embedBatchSize, after],
  );
  let budget = settings.embedMaxTokensPerRequest;
  const batch: PendingChunk[] = [];
  for (const row of rows) {
    if (batch.length > 0 && row.token_count > budget) break;
    budget -= row.token_count;
    batch.push(row);
  }
  return batch;
}
