/**
 * The Batch API lane of the embedding stage (issue 14): a bulk job's pending chunks go to
 * OpenAI's Batch API at half the price, one OpenAI batch at a time per job, while the job stays
 * in `embedding_in_progress` (no new state: the batch's row in `embedding_batches`, migration
 * 0010, is the handle).
 *
 *   intent ──files.create──▶ uploaded ──batches.create──▶ submitted ──poll…──▶ ingested
 *
 * Every step is recorded in Postgres, fenced by the lease, before the call it stands for:
 * - the intent (round, chunk ids, a deterministic `intent_key`) before anything is sent;
 * - `upload_started_at` before `files.create`: a later attempt that finds it set looks for the
 *   file by its name (`<intent_key>.jsonl`) before uploading, so a crash after the upload
 *   never leads to a second file;
 * - `submit_started_at` before `batches.create`: a later attempt looks for the batch by its
 *   `metadata.intent_key` before creating one, so a crash after the create never leads to a
 *   second batch.
 * Between polls the job is released (`snooze`: no slot, no lease held while OpenAI works, which
 * may take up to the 24 h window); the wait doubles from 1 s up to EMBED_BATCH_POLL_MAX_SECONDS.
 *
 * A finished batch's output file is streamed into the vector buffer exactly like synchronous
 * results (the same idempotent insert, at the Batch API's price, tokens counted once per vector
 * stored). Lines that produced no vector (a partly failed batch's error file, an expired
 * batch's unfinished requests) stay pending: the next round sends only them. After
 * {@link MAX_SHORT_BATCHES} batches that left requests out, or one that OpenAI failed outright
 * (it refused the input, so resending it cannot help), the rest goes through the synchronous API:
 * a document never waits on a third 24 h window.
 */
import { isFinished, type BatchHandle } from "../clients/openaiBatch.ts";
import { costUsd } from "../clients/tokens.ts";
import { deterministicId, vectorSha } from "../ids.ts";
import type { StageContext, StageOutcome } from "../worker/stage.ts";
import { float4ArrayParam } from "../db/float4Array.ts";
import type { PipelineServices } from "./services.ts";
import { MODEL_DIMENSIONS } from "../profiles/profiles.ts";
import type { JobSettings } from "./settings.ts";

/**
 * Requests (chunks) per OpenAI batch. The input file is built in memory: 5,000 chunks of at
 * most 512 tokens are ≤ ~15 MB of JSONL; OpenAI allows 50,000 requests and 200 MB. A document
 * with more pending chunks is sent in several rounds.
 */
export const MAX_REQUESTS_PER_BATCH = 5_000;

/** Batches that left requests out (partly failed, expired, cancelled) before the rest goes synchronous. */
export const MAX_SHORT_BATCHES = 3;

/** The first wait between polls; it doubles per poll up to `embedBatchPollMaxMs`. */
const FIRST_POLL_MS = 1_000;

type Ctx = StageContext<PipelineServices>;

interface BatchRow {
  intent_key: string;
  round: number;
  chunk_ids: string[];
  status: "intent" | "uploaded" | "submitted" | "ingested";
  input_file_id: string | null;
  batch_id: string | null;
  upload_started_at: Date | null;
  submit_started_at: Date | null;
  polls: number;
}

const ROW = "intent_key, round, chunk_ids, status, input_file_id, batch_id, upload_started_at, submit_started_at, polls";

/** The job's batch still under way for this model/version (at most one: a unique partial index). */
const OPEN_BATCH = `SELECT ${ROW} FROM upload_pipeline.embedding_batches
  WHERE job_id = $1 AND embed_model = $2 AND embed_version = $3 AND status <> 'ingested'`;

/** Rounds so far, how many left requests out, and whether OpenAI failed one outright. */
const BATCH_HISTORY = `SELECT count(*)::int AS rounds,
         count(*) FILTER (WHERE failed > 0)::int AS short,
         bool_or(outcome = 'failed') AS refused
    FROM upload_pipeline.embedding_batches WHERE job_id = $1 AND embed_model = $2 AND embed_version = $3`;

const PENDING_CHUNK_IDS = `SELECT c.chunk_id FROM upload_pipeline.document_chunk_buffer c
  WHERE c.document_id = $1 AND c.chunker_name = $2 AND c.chunker_version = $3
    AND NOT EXISTS (SELECT 1 FROM upload_pipeline.document_vector_buffer v
                     WHERE v.chunk_id = c.chunk_id AND v.embed_model = $4 AND v.embed_version = $5)
  ORDER BY c.chunk_ord LIMIT $6`;

const RECORD_INTENT = `INSERT INTO upload_pipeline.embedding_batches (intent_key, job_id, document_id, embed_model, embed_version, round, chunk_ids)
  VALUES ($1, $2, $3, $4, $5, $6, $7::uuid[]) RETURNING ${ROW}`;

const CHUNK_TEXTS = `SELECT chunk_id, text FROM upload_pipeline.document_chunk_buffer WHERE chunk_id = ANY($1::uuid[]) ORDER BY chunk_ord`;

/** Moves a batch row one step, naming the step it expects (a stale writer changes nothing). */
const STEP = {
  uploadStarted: `UPDATE upload_pipeline.embedding_batches SET upload_started_at = coalesce(upload_started_at, clock_timestamp()), updated_at = clock_timestamp()
    WHERE intent_key = $1 AND status = 'intent' RETURNING ${ROW}`,
  uploaded: `UPDATE upload_pipeline.embedding_batches SET status = 'uploaded', input_file_id = $2, updated_at = clock_timestamp()
    WHERE intent_key = $1 AND status = 'intent' RETURNING ${ROW}`,
  submitStarted: `UPDATE upload_pipeline.embedding_batches SET submit_started_at = coalesce(submit_started_at, clock_timestamp()), updated_at = clock_timestamp()
    WHERE intent_key = $1 AND status = 'uploaded' RETURNING ${ROW}`,
  submitted: `UPDATE upload_pipeline.embedding_batches SET status = 'submitted', batch_id = $2, updated_at = clock_timestamp()
    WHERE intent_key = $1 AND status = 'uploaded' RETURNING ${ROW}`,
  polled: `UPDATE upload_pipeline.embedding_batches SET polls = polls + 1, updated_at = clock_timestamp()
    WHERE intent_key = $1 AND status = 'submitted' RETURNING ${ROW}`,
  ingested: `UPDATE upload_pipeline.embedding_batches SET status = 'ingested', outcome = $2, succeeded = $3, failed = $4, tokens = $5, cost_usd = $6::numeric,
      updated_at = clock_timestamp()
    WHERE intent_key = $1 AND status = 'submitted' RETURNING ${ROW}`,
} as const;

/**
 * Vectors from a batch and the job's counters in one statement. Tokens and cost grow only by
 * the rows this insert wrote, so ingesting the same output file again (after a crash part-way)
 * neither duplicates a vector nor bills it twice; `batch_api_tokens` / `batch_api_cost_usd`
 * mark the share of `tokens` / `cost_usd` priced at the Batch API's rate.
 */
function insertBatchVectorsSql(rows: number): string {
  const values = Array.from({ length: rows }, (_, i) => `($${6 + 4 * i}::uuid, $${7 + 4 * i}::real[], $${8 + 4 * i}::text, $${9 + 4 * i}::int)`);
  return `
  WITH v AS (SELECT * FROM (VALUES ${values.join(", ")}) AS v(chunk_id, embedding, vector_sha, tokens)),
  written AS (
    INSERT INTO upload_pipeline.document_vector_buffer (chunk_id, embed_model, embed_version, embedding, vector_sha, batch_id)
    SELECT v.chunk_id, $2, $3, v.embedding, v.vector_sha, $4 FROM v
    ON CONFLICT DO NOTHING
    RETURNING chunk_id),
  billed AS (SELECT count(*) AS n, coalesce(sum(v.tokens), 0) AS tokens FROM written JOIN v USING (chunk_id))
  UPDATE upload_pipeline.upload_jobs SET progress = progress || jsonb_build_object(
      'vectors_done', coalesce((progress->>'vectors_done')::int, 0) + (SELECT n FROM billed),
      'batches_done', coalesce((progress->>'batches_done')::int, 0) + 1,
      'tokens', coalesce((progress->>'tokens')::bigint, 0) + (SELECT tokens FROM billed),
      'cost_usd', coalesce((progress->>'cost_usd')::numeric, 0) + round((SELECT tokens FROM billed) * $5::numeric, 10),
      'batch_api_tokens', coalesce((progress->>'batch_api_tokens')::bigint, 0) + (SELECT tokens FROM billed),
      'batch_api_cost_usd', coalesce((progress->>'batch_api_cost_usd')::numeric, 0) + round((SELECT tokens FROM billed) * $5::numeric, 10))
   WHERE job_id = $1`;
}

/** Whether this job embeds through the Batch API: a bulk job, with the lane switched on. */
export async function usesBatchApi(ctx: Ctx): Promise<boolean> {
  if (!ctx.services.settings.embedBulkViaBatchApi) return false;
  const { rows } = await ctx.pool.query<{ lane: string }>("SELECT lane FROM upload_pipeline.upload_jobs WHERE job_id = $1", [ctx.job.job_id]);
  return rows[0]?.lane === "bulk";
}

/**
 * Embed the job's pending chunks through the Batch API. Returns a snooze while a batch is under
 * way, and nothing once every chunk has its vector (the caller moves the job on).
 * `embedSynchronously` embeds whatever is still pending through `/v1/embeddings` (the fallback).
 */
export async function embedViaBatchApi(ctx: Ctx, pinned: JobSettings, embedSynchronously: () => Promise<unknown>): Promise<StageOutcome | void> {
  const key = [ctx.job.job_id, pinned.embedModel, pinned.embedVersion];
  for (;;) {
    ctx.checkpoint();
    let row = (await ctx.pool.query<BatchRow>(OPEN_BATCH, key)).rows[0];
    if (!row) {
      const { rows } = await ctx.pool.query<{ chunk_id: string }>(PENDING_CHUNK_IDS, [
        ctx.job.document_id,
        pinned.chunkerName,
        pinned.chunkerVersion,
        pinned.embedModel,
        pinned.embedVersion,
        MAX_REQUESTS_PER_BATCH,
      ]);
      if (rows.length === 0) return;
      const history = (await ctx.pool.query<{ rounds: number; short: number; refused: boolean | null }>(BATCH_HISTORY, key)).rows[0]!;
      if (history.refused || history.short >= MAX_SHORT_BATCHES) {
        ctx.log.warn(
          { rounds: history.rounds, short: history.short, refused: history.refused ?? false },
          "batch API gave up on some requests: embedding the rest synchronously",
        );
        ctx.counts.batch_fallback = 1;
        await embedSynchronously();
        return;
      }
      const round = history.rounds + 1;
      const intentKey = deterministicId(ctx.job.document_id, "openai-batch", pinned.embedModel, pinned.embedVersion, round);
      row = await step(ctx, RECORD_INTENT, [
        intentKey,
        ctx.job.job_id,
        ctx.job.document_id,
        pinned.embedModel,
        pinned.embedVersion,
        round,
        rows.map((r) => r.chunk_id),
      ]);
    }
    if (row.status === "intent") row = await upload(ctx, pinned, row);
    if (row.status === "uploaded") row = await submit(ctx, row);
    const batch = await ctx.services.batches.retrieveBatch(row.batch_id!, ctx.signal);
    if (!isFinished(batch.status)) {
      const polled = await step(ctx, STEP.polled, [row.intent_key]);
      const delayMs = Math.min(ctx.services.settings.embedBatchPollMaxMs, FIRST_POLL_MS * 2 ** (polled.polls - 1));
      ctx.counts.polls = polled.polls;
      return { next: "snooze", delayMs, reason: `OpenAI batch ${batch.id} is ${batch.status}` };
    }
    await ingest(ctx, pinned, row, batch);
  }
}

/** One fenced statement on a batch row that must return it (else another writer moved it first). */
async function step(ctx: Ctx, sql: string, params: unknown[]): Promise<BatchRow> {
  const { rows } = await ctx.fenced(({ client }) => client.query<BatchRow>(sql, params));
  if (!rows[0]) throw new Error(`embedding batch row changed under us (${sql.slice(0, 60)}…)`);
  return rows[0];
}

/** Upload the request lines as `<intent_key>.jsonl`, or find the upload an earlier attempt made. */
async function upload(ctx: Ctx, pinned: JobSettings, row: BatchRow): Promise<BatchRow> {
  const { batches } = ctx.services;
  const filename = `${row.intent_key}.jsonl`;
  let fileId = row.upload_started_at ? await batches.findUpload(filename, row.upload_started_at, ctx.signal) : undefined;
  if (fileId) ctx.log.info({ file_id: fileId }, "batch input already uploaded by an earlier attempt: reusing it");
  if (!fileId) {
    const started = await step(ctx, STEP.uploadStarted, [row.intent_key]);
    const { rows } = await ctx.pool.query<{ chunk_id: string; text: string }>(CHUNK_TEXTS, [started.chunk_ids]);
    const body = (input: string) => ({
      model: pinned.embedModel,
      input,
      ...(pinned.embedDimensions !== undefined ? { dimensions: pinned.embedDimensions } : {}),
    });
    const jsonl = rows.map((c) => JSON.stringify({ custom_id: c.chunk_id, method: "POST", url: "/v1/embeddings", body: body(c.text) })).join("\n");
    await ctx.faults.hit("call.openai.files.create.before", { jobId: ctx.job.job_id, round: row.round });
    await ctx.checkLease();
    fileId = await batches.uploadRequests(jsonl, filename, ctx.signal);
    await ctx.faults.hit("call.openai.files.create.after", { jobId: ctx.job.job_id, round: row.round });
  }
  return step(ctx, STEP.uploaded, [row.intent_key, fileId]);
}

/** Create the batch with `metadata.intent_key`, or find the one an earlier attempt created. */
async function submit(ctx: Ctx, row: BatchRow): Promise<BatchRow> {
  const { batches } = ctx.services;
  let batch = row.submit_started_at ? await batches.findBatch("intent_key", row.intent_key, row.submit_started_at, ctx.signal) : undefined;
  if (batch) ctx.log.info({ batch_id: batch.id }, "batch already created by an earlier attempt: following it");
  if (!batch) {
    await step(ctx, STEP.submitStarted, [row.intent_key]);
    await ctx.faults.hit("call.openai.batches.create.before", { jobId: ctx.job.job_id, round: row.round });
    await ctx.checkLease(); // a billed call: not after our lease has run out
    batch = await batches.createBatch(
      row.input_file_id!,
      { intent_key: row.intent_key, document_id: ctx.job.document_id, round: String(row.round) },
      ctx.signal,
    );
    await ctx.faults.hit("call.openai.batches.create.after", { jobId: ctx.job.job_id, round: row.round });
  }
  ctx.counts.batch_round = row.round;
  return step(ctx, STEP.submitted, [row.intent_key, batch.id]);
}

/** Stream the output (and error) file into the vector buffer, then close the row. */
async function ingest(ctx: Ctx, pinned: JobSettings, row: BatchRow, batch: BatchHandle): Promise<void> {
  const wanted = new Set(row.chunk_ids);
  const width = pinned.embedDimensions ?? MODEL_DIMENSIONS[pinned.embedModel as keyof typeof MODEL_DIMENSIONS];
  const pricePerToken = costUsd(pinned.embedModel, 1, "batch");
  let group: Array<{ chunkId: string; vector: Float32Array; tokens: number }> = [];
  let succeeded = 0;
  let tokens = 0;
  const store = async () => {
    if (group.length === 0) return;
    const rows = group;
    group = [];
    await ctx.fenced(({ client }) =>
      client.query(insertBatchVectorsSql(rows.length), [
        ctx.job.job_id,
        pinned.embedModel,
        pinned.embedVersion,
        row.intent_key,
        pricePerToken.toFixed(20),
        ...rows.flatMap((r) => [r.chunkId, float4ArrayParam(r.vector), vectorSha(r.vector), r.tokens]),
      ]),
    );
  };
  const failures = new Map<string, number>();
  for (const fileId of [batch.outputFileId, batch.errorFileId]) {
    if (!fileId) continue;
    for await (const line of await ctx.services.batches.readResults(fileId, ctx.signal)) {
      if (!wanted.has(line.customId)) continue; // not one of ours: never stored
      const why =
        line.embedding === undefined ? line.failure! : line.embedding.length !== width ? `${line.embedding.length} dimensions, expected ${width}` : undefined;
      if (why !== undefined) {
        failures.set(why, (failures.get(why) ?? 0) + 1);
        continue;
      }
      wanted.delete(line.customId);
      succeeded += 1;
      tokens += line.promptTokens;
      group.push({ chunkId: line.customId, vector: line.embedding!, tokens: line.promptTokens });
      if (group.length >= ctx.services.settings.embedBatchSize) await store();
    }
  }
  await store();
  const failed = row.chunk_ids.length - succeeded;
  await ctx.faults.hit("commit.batch_ingested.before", { jobId: ctx.job.job_id, round: row.round });
  await step(ctx, STEP.ingested, [row.intent_key, batch.status, succeeded, failed, tokens, (tokens * pricePerToken).toFixed(10)]);
  const level = failed > 0 ? "warn" : "info";
  ctx.log[level](
    { batch_id: batch.id, status: batch.status, round: row.round, succeeded, failed, failures: Object.fromEntries(failures) },
    failed > 0 ? "batch ingested; its missing requests go in the next round" : "batch ingested",
  );
}
