/** Token counting (cl100k_base, as OpenAI bills embeddings) and cost per model. */
import { describe, expect, it } from "vitest";
import { EMBEDDING_PRICES_USD_PER_1M, costUsd, countBatchTokens, countTokens, isPricedModel } from "../../src/clients/tokens.ts";

describe("countTokens", () => {
  it("counts cl100k_base tokens", () => {
    expect(countTokens("hello world")).toBe(2);
    expect(countTokens("")).toBe(0);
    expect(countBatchTokens(["hello world", "hello world"])).toBe(4);
  });

  it("treats special-token text as ordinary characters instead of throwing", () => {
    expect(countTokens("a <|endoftext|> b")).toBe(8);
  });
});

describe("costUsd", () => {
  it("prices tokens per model", () => {
    expect(costUsd("text-embedding-3-small", 1_000_000)).toBeCloseTo(0.02, 12);
    expect(costUsd("text-embedding-3-large", 500_000)).toBeCloseTo(0.065, 12);
    expect(costUsd("text-embedding-ada-002", 10)).toBeCloseTo(0.000001, 12);
    expect(Object.keys(EMBEDDING_PRICES_USD_PER_1M)).toHaveLength(3);
  });

  it("refuses an unknown model or a negative count rather than recording $0", () => {
    expect(isPricedModel("text-embedding-4")).toBe(false);
    expect(() => costUsd("text-embedding-4", 10)).toThrow(/no price/);
    expect(() => costUsd("text-embedding-3-small", -1)).toThrow(/non-negative/);
  });
});
