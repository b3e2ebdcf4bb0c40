/**
 * SPEC §8.4: progress counters equal the buffer counts; tokens and cost equal the mock's usage.
 */
import { costUsd } from "../../../src/clients/tokens.ts";
import { Violations } from "../collector.ts";
import type { JobRow } from "../queries.ts";
import type { InvariantInput } from "../types.ts";
import type { DocumentCounts } from "./buffers.ts";

/** States in which `chunks_total`/`vectors_total` have been written (the job passed `chunks_stored`). */
const PAST_CHUNKING = new Set(["chunks_stored", "embedding_queued", "embedding_in_progress", "embeddings_stored", "complete", "failed_embedding"]);

const num = (value: unknown): number => (value === undefined || value === null ? 0 : Number(value));

export function checkCounters(jobs: readonly JobRow[], counts: ReadonlyMap<string, DocumentCounts>): Violations {
  const v = new Violations("counters_match_buffers", "§8.4");
  for (const job of jobs) {
    const c = counts.get(job.document_id) ?? { chunkRows: 0, vectorRows: 0 };
    const p = job.progress ?? {};
    const where = `job ${job.job_id} (document ${job.document_id}, ${job.status})`;
    const expect = (field: string, actual: number) => {
      if (num(p[field]) !== actual) v.add(`${where}: progress.${field} = ${String(p[field] ?? "absent")} but the buffer holds ${actual}`);
    };
    // chunks_done and vectors_done are recounted in the transaction that writes the rows, so they
    // match the buffers in every state, not only at the end.
    expect("chunks_done", c.chunkRows);
    expect("vectors_done", c.vectorRows);
    if (PAST_CHUNKING.has(job.status)) {
      expect("chunks_total", c.chunkRows);
      expect("vectors_total", c.chunkRows);
    }
  }
  return v;
}

export function checkTokensAndCost(jobs: readonly JobRow[], input: InvariantInput): Violations {
  const v = new Violations("tokens_and_cost_match_usage", "§8.4");
  const model = input.embed.model;
  let tokens = 0;
  for (const job of jobs) {
    const p = job.progress ?? {};
    const jobTokens = num(p.tokens);
    tokens += jobTokens;
    const cost = num(p.cost_usd);
    // The Batch API lane's share is priced at half (`batch_api_tokens`, the embed stage's mark).
    const batchTokens = num(p.batch_api_tokens);
    const expected = costUsd(model, jobTokens - batchTokens) + costUsd(model, batchTokens, "batch");
    // Each batch adds its cost rounded to 10 decimals (the embed stage's toFixed(10)).
    const tolerance = 1e-10 * (num(p.batches_done) + 1) + 1e-9 * expected;
    if (!(Math.abs(cost - expected) <= tolerance)) {
      v.add(
        `job ${job.job_id} (document ${job.document_id}): progress.cost_usd = ${cost} but ${jobTokens} tokens of ${model} (${batchTokens} at the Batch API's price) cost ${expected}`,
      );
    }
  }
  const billed = (input.mockUsage.promptTokensByModel[model] ?? 0) + (input.mockUsage.batchPromptTokensByModel?.[model] ?? 0);
  if (input.crashesHappened ? tokens > billed : tokens !== billed) {
    v.add(
      `progress.tokens summed over ${jobs.length} jobs = ${tokens} but the mock billed ${billed} prompt tokens for ${model}` +
        (input.crashesHappened ? " (more than billed is impossible)" : " (no worker crashed, so they must be equal)"),
    );
  }
  for (const [other, n] of Object.entries({ ...input.mockUsage.promptTokensByModel, ...input.mockUsage.batchPromptTokensByModel })) {
    if (other !== model && n > 0 && !input.profile?.otherEmbeds.some((e) => e.model === other))
      v.add(`the mock billed ${n} prompt tokens for ${other}, but the run embeds with ${model}`);
  }
  return v;
}
