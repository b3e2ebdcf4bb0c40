/**
 * The Batch API lane (issue 14): every OpenAI batch stands for one recorded intent (a crash after
 * `batches.create` found the batch by its metadata instead of creating another), and a bulk job's
 * vectors are billed at the Batch API's price, recorded per document.
 */
import { costUsd } from "../../../src/clients/tokens.ts";
import { Violations } from "../collector.ts";
import type { Db } from "../queries.ts";
import type { InvariantInput } from "../types.ts";

/** Batches the mock created = intents that got a batch, and no batch id serves two intents. */
export async function checkOneBatchPerIntent(db: Db, input: InvariantInput): Promise<Violations> {
  const v = new Violations("one_openai_batch_per_intent", "issue 14");
  const { rows } = await db.query<{ intents: number; distinct_batches: number }>(
    `SELECT count(*) FILTER (WHERE batch_id IS NOT NULL)::int AS intents, count(DISTINCT batch_id)::int AS distinct_batches
       FROM upload_pipeline.embedding_batches`,
  );
  const { intents, distinct_batches } = rows[0]!;
  const created = input.batchApi?.batchesCreated ?? 0;
  if (intents !== distinct_batches) v.add(`${intents} batch intents share ${distinct_batches} OpenAI batch ids`);
  if (created !== intents) v.add(`the OpenAI mock created ${created} batches for ${intents} recorded intents (a second batch for the same intent)`);
  if (created === 0 && intents === 0) v.note = "no batch was submitted";
  return v;
}

/**
 * With the lane on, every complete bulk job embedded through the Batch API: its
 * `batch_api_tokens` equal the tokens of its ingested batches and its whole `tokens` (unless it
 * fell back to the synchronous API after short or failed batches), priced at half.
 */
export async function checkBulkJobsAtBatchPrice(db: Db, input: InvariantInput): Promise<Violations> {
  const v = new Violations("bulk_jobs_billed_at_batch_price", "issue 14");
  if (!input.batchApi?.lane) {
    v.note = "EMBED_BULK_VIA_BATCH_API=false: not checked";
    return v;
  }
  const { rows } = await db.query<{ job_id: string; progress: Record<string, unknown>; batch_tokens: string; short: number; refused: boolean }>(
    `SELECT j.job_id, j.progress, coalesce(sum(b.tokens), 0) AS batch_tokens,
            count(*) FILTER (WHERE b.failed > 0)::int AS short, coalesce(bool_or(b.outcome = 'failed'), false) AS refused
       FROM upload_pipeline.upload_jobs j LEFT JOIN upload_pipeline.embedding_batches b ON b.job_id = j.job_id AND b.status = 'ingested'
      WHERE j.lane = 'bulk' AND j.status = 'complete' AND ($1::boolean OR j.profile_id IS NOT DISTINCT FROM $2::text)
      GROUP BY j.job_id, j.progress`,
    // A profile's pass (model migration) prices only its own jobs, at its own model.
    [input.profile === undefined, input.profile?.jobs ?? null],
  );
  const num = (x: unknown) => Number(x ?? 0);
  for (const r of rows) {
    const tokens = num(r.progress.tokens);
    const batchTokens = num(r.progress.batch_api_tokens);
    if (batchTokens !== Number(r.batch_tokens)) v.add(`job ${r.job_id}: progress.batch_api_tokens = ${batchTokens} but its batches billed ${r.batch_tokens}`);
    const fellBack = r.refused || r.short >= 3;
    if (!fellBack && tokens !== batchTokens) v.add(`job ${r.job_id}: ${tokens} tokens, only ${batchTokens} through the Batch API`);
    if (tokens > 0 && batchTokens === 0) v.add(`job ${r.job_id}: a bulk job billed nothing through the Batch API`);
    const expected = costUsd(input.embed.model, batchTokens, "batch");
    if (Math.abs(num(r.progress.batch_api_cost_usd) - expected) > 1e-9 + 1e-9 * expected) {
      v.add(`job ${r.job_id}: progress.batch_api_cost_usd = ${num(r.progress.batch_api_cost_usd)}, ${batchTokens} tokens at the batch price cost ${expected}`);
    }
  }
  if (rows.length === 0) v.note = "no complete bulk job";
  return v;
}
