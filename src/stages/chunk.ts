/**
 * `parse_validated → chunking → chunks_stored`: stream the normalized markdown through the
 * deterministic chunker and write the chunks in batches with `ON CONFLICT DO NOTHING`, so a
 * resumed run rewrites nothing and memory holds one batch at a time. Then verify: the stored rows
 * are exactly the chunks this run computed (count, and a digest over every `chunk_sha` in order).
 */
import { createHash } from "node:crypto";
import { chunkMarkdown, type Chunk } from "../chunking/markdownChunker.ts";
import { PermanentError } from "../errors.ts";
import { chunkId, sha256 } from "../ids.ts";
import type { Stage, StageContext } from "../worker/stage.ts";
import type { PipelineServices } from "./services.ts";
import { jobSettings, type JobSettings } from "./settings.ts";

export const chunkDocument: Stage<PipelineServices> = {
  name: "chunk",
  handles: ["parse_validated", "chunking"],
  async run(ctx) {
    // The chunker and its settings the job began with (its profile's), whatever this worker is configured with.
    const pinned = await jobSettings(ctx);
    if (ctx.job.status === "parse_validated") {
      await ctx.transition("chunking", { detail: { chunker_name: pinned.chunkerName, chunker_version: pinned.chunkerVersion } });
    }
    const job = ctx.job;
    if (!job.parsed_path) throw new PermanentError("parsed_path_missing", "the job reached chunking without a parsed_path");
    const { settings, storage } = ctx.services;

    await ctx.faults.hit("call.storage.download.before", { jobId: job.job_id });
    const body = await storage.download(job.parsed_path, ctx.signal);
    // The chunker normalizes as it reads (the same rules validate hashed), so offsets point
    // into the normalized document.
    const chunks = chunkMarkdown(body, {
      maxTokens: pinned.chunkMaxTokens,
      overlapTokens: pinned.chunkOverlapTokens,
    });

    const digest = createHash("sha256");
    let count = 0;
    let batch: HashedChunk[] = [];
    let batchNo = 0;
    for await (const chunk of chunks) {
      const sha = sha256(chunk.text);
      digest.update(sha);
      count += 1;
      batch.push({ ...chunk, sha });
      if (batch.length >= settings.chunkWriteBatch) {
        await writeChunks(ctx, pinned, batch, ++batchNo);
        batch = [];
      }
      ctx.signal.throwIfAborted();
    }
    if (batch.length > 0) await writeChunks(ctx, pinned, batch, ++batchNo);

    const stored = await ctx.pool.query<{ n: number; digest: string | null }>(
      `SELECT count(*)::int AS n, string_agg(chunk_sha, '' ORDER BY chunk_ord) AS digest
         FROM upload_pipeline.document_chunk_buffer
        WHERE document_id = $1 AND chunker_name = $2 AND chunker_version = $3`,
      [job.document_id, pinned.chunkerName, pinned.chunkerVersion],
    );
    const expected = digest.digest("hex");
    const actual = createHash("sha256")
      .update(stored.rows[0]?.digest ?? "")
      .digest("hex");
    if (stored.rows[0]?.n !== count || actual !== expected) {
      // Rows from an earlier run disagree with this run's chunks: the chunker's output changed
      // without a version bump. Retrying cannot fix that.
      throw new PermanentError(
        "chunks_mismatch",
        `stored chunks differ from the chunker's output (${stored.rows[0]?.n} stored, ${count} computed): bump CHUNKER_VERSION when output changes`,
      );
    }
    if (count === 0) throw new PermanentError("no_chunks", "the document produced no chunks");

    await ctx.faults.hit("commit.chunks_stored.before", { jobId: job.job_id });
    await ctx.transition("chunks_stored", {
      progress: { chunks_total: count, chunks_done: count, vectors_total: count },
      detail: { chunks: count, chunks_digest: expected },
    });
  },
};

type HashedChunk = Chunk & { sha: string };

/**
 * One batch of chunks and the job's `chunks_done`, in one statement (so in one transaction): the
 * counter grows by the rows this insert wrote, not by a count(*) over the document's buffer,
 * which made chunking O(N²) in a document's chunks. Rows an earlier run already stored conflict,
 * are not counted again, and were counted when they were written.
 */
const INSERT_CHUNKS = `
  WITH written AS (
    INSERT INTO upload_pipeline.document_chunk_buffer
      (chunk_id, document_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha, token_count, meta)
    SELECT c.chunk_id, $2, $3, $4, c.chunk_ord, c.text, c.chunk_sha, c.token_count, c.meta
      FROM unnest($5::uuid[], $6::int[], $7::text[], $8::text[], $9::int[], $10::jsonb[]) AS c(chunk_id, chunk_ord, text, chunk_sha, token_count, meta)
    ON CONFLICT DO NOTHING
    RETURNING 1)
  UPDATE upload_pipeline.upload_jobs
     SET progress = progress || jsonb_build_object('chunks_done', coalesce((progress->>'chunks_done')::int, 0) + (SELECT count(*) FROM written))
   WHERE job_id = $1`;

async function writeChunks(ctx: StageContext<PipelineServices>, pinned: JobSettings, batch: HashedChunk[], batchNo: number): Promise<void> {
  const job = ctx.job;
  await ctx.faults.hit("commit.chunks.before", { jobId: job.job_id, batch: batchNo, size: batch.length });
  await ctx.fenced(({ client }) =>
    client.query(INSERT_CHUNKS, [
      job.job_id,
      job.document_id,
      pinned.chunkerName,
      pinned.chunkerVersion,
      batch.map((c) => chunkId(job.document_id, pinned.chunkerName, pinned.chunkerVersion, c.ord)),
      batch.map((c) => c.ord),
      batch.map((c) => c.text),
      batch.map((c) => c.sha),
      batch.map((c) => c.tokenCount),
      batch.map((c) => JSON.stringify(c.meta)),
    ]),
  );
  await ctx.faults.hit("commit.chunks.after", { jobId: job.job_id, batch: batchNo });
}
