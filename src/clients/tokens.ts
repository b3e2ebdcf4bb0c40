/**
 * Token counting and embedding cost (SPEC §4 micro-batch sizing, §5 cost per document).
 *
 * `text-embedding-3-*` and `text-embedding-ada-002` all use the cl100k_base encoding, so the
 * count here is the count OpenAI bills (and the count the mock reports in `usage`).
 */
import { countTokens as cl100kCount } from "gpt-tokenizer/encoding/cl100k_base";

/**
 * The embeddings API embeds text as text: a document that happens to contain `<|endoftext|>`
 * is tokenized as ordinary characters, not as the special token. gpt-tokenizer's default is to
 * throw on special tokens, which would turn a harmless document into a "corrupt" one, so we
 * disable that check.
 */
const AS_PLAIN_TEXT = { disallowedSpecial: new Set<string>() };

/**
 * Number of cl100k_base tokens in `text`, as the embeddings API counts them.
 *
 * @example
 * countTokens("hello world") // 2
 */
export function countTokens(text: string): number {
  return cl100kCount(text, AS_PLAIN_TEXT);
}

/** Sum of `countTokens` over a batch of inputs (what one embeddings request will cost). */
export function countBatchTokens(inputs: readonly string[]): number {
  let total = 0;
  for (const input of inputs) total += countTokens(input);
  return total;
}

/**
 * Published list prices in USD per 1M input tokens (standard tier, not Batch API).
 * Update here when OpenAI changes them; unknown models cost `costUsd` an error, not a guess.
 */
export const EMBEDDING_PRICES_USD_PER_1M = {
  "text-embedding-3-small": 0.02,
  "text-embedding-3-large": 0.13,
  "text-embedding-ada-002": 0.1,
} as const satisfies Record<string, number>;

export type PricedEmbeddingModel = keyof typeof EMBEDDING_PRICES_USD_PER_1M;

/** Whether `model` has a known price (use it to validate configuration at startup). */
export function isPricedModel(model: string): model is PricedEmbeddingModel {
  return Object.hasOwn(EMBEDDING_PRICES_USD_PER_1M, model);
}

/**
 * The Batch API bills embeddings at half the synchronous price ("50% cost discount compared to
 * synchronous APIs", OpenAI's Batch API guide). Vectors ingested from a batch are priced so.
 */
export const BATCH_API_PRICE_FACTOR = 0.5;

/** How a call was billed: the synchronous `/v1/embeddings` price, or the Batch API's. */
export type Pricing = "sync" | "batch";

/**
 * Cost in USD of `tokens` input tokens on `model` (`pricing: "batch"`: at the Batch API's price).
 *
 * @throws Error if the model has no known price: silently recording $0 would make the cost
 *   invariant (SPEC §8.4) pass for the wrong reason.
 * @example
 * costUsd("text-embedding-3-small", 1_000_000) // 0.02
 * costUsd("text-embedding-3-small", 1_000_000, "batch") // 0.01
 */
export function costUsd(model: string, tokens: number, pricing: Pricing = "sync"): number {
  if (!isPricedModel(model)) {
    throw new Error(
      `costUsd: no price for embedding model "${model}"; add it to EMBEDDING_PRICES_USD_PER_1M (known: ${Object.keys(EMBEDDING_PRICES_USD_PER_1M).join(", ")})`,
    );
  }
  if (!Number.isFinite(tokens) || tokens < 0) throw new Error(`costUsd: tokens must be a non-negative number, got ${tokens}`);
  return (tokens * EMBEDDING_PRICES_USD_PER_1M[model] * (pricing === "batch" ? BATCH_API_PRICE_FACTOR : 1)) / 1_000_000;
}
