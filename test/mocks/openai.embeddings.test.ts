/**
 * The OpenAI embeddings mock against SPEC §7: the official `openai` SDK, unchanged, over real
 * HTTP; raw wire checks of bodies, statuses and headers; properties of the vectors and usage.
 */
import fc from "fast-check";
import { encode } from "gpt-tokenizer/encoding/cl100k_base";
import OpenAI, { APIConnectionError, AuthenticationError, BadRequestError, InternalServerError, NotFoundError, RateLimitError } from "openai";
import { describe, expect, it } from "vitest";
import { expectedEmbedding, toBase64Float32 } from "../../mocks/index.ts";
import type { MockServer } from "../../mocks/server.ts";
import { openaiSdk, useMockServer } from "../support/mockServer.ts";

let server: MockServer;
let client: OpenAI;

useMockServer({ seed: 3 }, (started) => {
  server = started;
  client = openaiSdk(started);
});

const MODEL = "text-embedding-3-small";

function post(body: unknown, key: string | null = server.env.OPENAI_API_KEY!): Promise<Response> {
  return fetch(`${server.urls.openai}/embeddings`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key === null ? {} : { authorization: `Bearer ${key}` }) },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

describe("the official SDK", () => {
  it("decodes the default (base64) answer into the deterministic vectors", async () => {
    const answer = await client.embeddings.create({ model: MODEL, input: ["alpha", "beta"] });
    expect(answer.object).toBe("list");
    expect(answer.model).toBe(MODEL);
    expect(answer.data.map((d) => d.index)).toEqual([0, 1]);
    expect(answer.data[0]!.embedding).toEqual(expectedEmbedding(MODEL, "alpha"));
    expect(answer.data[1]!.embedding).toHaveLength(1536);
    expect(answer.usage).toEqual({ prompt_tokens: 2, total_tokens: 2 });
  });

  it("answers float when asked, with dimensions", async () => {
    const answer = await client.embeddings.create({ model: "text-embedding-3-large", input: "gamma", encoding_format: "float", dimensions: 64 });
    expect(answer.data[0]!.embedding).toEqual(expectedEmbedding("text-embedding-3-large", "gamma", 64));
  });

  it("gives the large model 3072 dimensions by default and accepts token arrays", async () => {
    const tokens = encode("hello world");
    const answer = await client.embeddings.create({ model: "text-embedding-3-large", input: [tokens], encoding_format: "float" });
    expect(answer.data[0]!.embedding).toHaveLength(3072);
    expect(answer.data[0]!.embedding).toEqual(expectedEmbedding("text-embedding-3-large", "hello world"));
    expect(answer.usage.prompt_tokens).toBe(tokens.length);
  });

  it("surfaces a wrong key as AuthenticationError with code invalid_api_key", async () => {
    const bad = new OpenAI({ baseURL: server.urls.openai, apiKey: "sk-wrong-key-123456", maxRetries: 0 });
    const error = await bad.embeddings.create({ model: MODEL, input: "x" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AuthenticationError);
    expect((error as AuthenticationError).status).toBe(401);
    expect((error as AuthenticationError).code).toBe("invalid_api_key");
    expect((error as AuthenticationError).message).not.toContain("sk-wrong-key-123456");
  });

  it("surfaces limit errors as BadRequestError with the real messages", async () => {
    const tooMany = await client.embeddings.create({ model: MODEL, input: Array.from({ length: 2049 }, () => "a") }).catch((e: unknown) => e);
    expect(tooMany).toBeInstanceOf(BadRequestError);
    expect((tooMany as BadRequestError).message).toBe("400 Invalid 'input': array length must be 2048 or less.");

    const tooLong = await client.embeddings.create({ model: MODEL, input: ["ok", "word ".repeat(8193)] }).catch((e: unknown) => e);
    expect((tooLong as BadRequestError).message).toBe("400 Invalid 'input[1]': maximum input length is 8192 tokens.");
    expect((tooLong as BadRequestError).param).toBe("input[1]");

    const tooBig = await client.embeddings.create({ model: MODEL, input: Array.from({ length: 40 }, () => "word ".repeat(8000)) }).catch((e: unknown) => e);
    expect(tooBig).toBeInstanceOf(BadRequestError);
    expect((tooBig as BadRequestError).code).toBe("max_tokens_per_request");
    expect((tooBig as BadRequestError).type).toBe("max_tokens_per_request");
    const requested = 40 * encode("word ".repeat(8000)).length;
    expect((tooBig as BadRequestError).message).toBe(`400 Requested ${requested} tokens, max 300000 tokens per request`);
  });

  it("refuses an empty string anywhere but accepts whitespace", async () => {
    const empty = await client.embeddings.create({ model: MODEL, input: ["fine", ""] }).catch((e: unknown) => e);
    expect(empty).toBeInstanceOf(BadRequestError);
    const blank = await client.embeddings.create({ model: MODEL, input: [" ", "\n"] });
    expect(blank.data).toHaveLength(2);
  });

  it("surfaces an unknown model as NotFoundError model_not_found", async () => {
    const error = await client.embeddings.create({ model: "text-embedding-9", input: "x" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NotFoundError);
    expect((error as NotFoundError).code).toBe("model_not_found");
  });

  it("surfaces insufficient_quota, 500 and 503 with their types", async () => {
    server.mocks.setFaults({
      openai: {
        bursts: [
          { fault: "insufficient_quota", start: 1, count: 1 },
          { fault: 500, start: 2, count: 1 },
          { fault: 503, start: 3, count: 1 },
        ],
      },
    });
    const quota = await client.embeddings.create({ model: MODEL, input: "x" }).catch((e: unknown) => e);
    expect(quota).toBeInstanceOf(RateLimitError);
    expect((quota as RateLimitError).code).toBe("insufficient_quota");
    expect((quota as RateLimitError).type).toBe("insufficient_quota");
    const e500 = await client.embeddings.create({ model: MODEL, input: "x" }).catch((e: unknown) => e);
    expect(e500).toBeInstanceOf(InternalServerError);
    expect((e500 as InternalServerError).status).toBe(500);
    expect((e500 as InternalServerError).type).toBe("server_error");
    const e503 = await client.embeddings.create({ model: MODEL, input: "x" }).catch((e: unknown) => e);
    expect((e503 as InternalServerError).status).toBe(503);
    expect((e503 as InternalServerError).type).toBe("server_error");
  });

  it("lets the SDK's own retries ride over a 503 burst", async () => {
    server.mocks.setFaults({ openai: { bursts: [{ fault: 503, start: 1, count: 2 }] } });
    const retrying = new OpenAI({ baseURL: server.urls.openai, apiKey: server.env.OPENAI_API_KEY, maxRetries: 2, timeout: 5_000 });
    // The SDK backs off 0.5–1 s per retry by default; the mock's 503 has no retry-after.
    const answer = await retrying.embeddings.create({ model: MODEL, input: "x" });
    expect(answer.data).toHaveLength(1);
    expect(server.mocks.stats().requests["openai.embeddings"]).toEqual({ "503": 2, "200": 1 });
  });

  it("surfaces a TPM rate limit as RateLimitError rate_limit_exceeded with a retry delay", async () => {
    server.mocks.setFaults({ openai: { rateLimits: { tpm: 10, rpm: 100 } } });
    await client.embeddings.create({ model: MODEL, input: "one two three four five six" });
    const error = await client.embeddings.create({ model: MODEL, input: "one two three four five six" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RateLimitError);
    const e = error as RateLimitError;
    expect(e.code).toBe("rate_limit_exceeded");
    expect(e.type).toBe("tokens");
    expect(e.message).toMatch(
      /^429 Rate limit reached for text-embedding-3-small in organization org-mock on tokens per min \(TPM\): Limit 10, Used \d+, Requested 6\. Please try again in [\d.]+m?s\. Visit https:\/\/platform\.openai\.com\/account\/rate-limits to learn more\.$/,
    );
    expect(Number(e.headers.get("retry-after-ms"))).toBeGreaterThan(0);
    expect(e.headers.get("x-ratelimit-limit-tokens")).toBe("10");
  });

  it("counts a reset connection as APIConnectionError", async () => {
    server.mocks.setFaults({ openai: { bursts: [{ fault: "reset", start: 1, count: 1 }] } });
    const error = await client.embeddings.create({ model: MODEL, input: "x" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(APIConnectionError);
    expect(server.mocks.stats().requests["openai.embeddings"]).toEqual({ reset: 1 });
  });
});

describe("the wire format", () => {
  it("sends a 401 body when the key is missing, with the rate-limit headers of the model it names", async () => {
    const res = await post({ model: MODEL, input: "x" }, null);
    expect(res.status).toBe(401);
    const body = (await res.json()) as { error: Record<string, unknown> };
    expect(body.error).toMatchObject({ type: "invalid_request_error", param: null, code: null });
    expect(String(body.error.message)).toMatch(/^You didn't provide an API key/);
    expect(res.headers.get("x-ratelimit-limit-requests")).not.toBeNull();
    expect(res.headers.get("x-ratelimit-remaining-tokens")).not.toBeNull();
  });

  it("puts x-ratelimit-* (Go durations) on successes and errors alike", async () => {
    server.mocks.setFaults({ openai: { rateLimits: { rpm: 60, tpm: 1_000 } } });
    const ok = await post({ model: MODEL, input: "hello world" });
    expect(ok.status).toBe(200);
    expect(ok.headers.get("x-ratelimit-limit-requests")).toBe("60");
    expect(ok.headers.get("x-ratelimit-limit-tokens")).toBe("1000");
    expect(ok.headers.get("x-ratelimit-remaining-requests")).toBe("59");
    expect(ok.headers.get("x-ratelimit-remaining-tokens")).toBe("998");
    expect(ok.headers.get("x-ratelimit-reset-requests")).toMatch(/^(1s|\d+(\.\d+)?ms|0\.\d+s|[\d.]+s)$/);
    expect(ok.headers.get("x-ratelimit-reset-tokens")).toMatch(/^\d+(\.\d+)?(ms|s)$/);
    const bad = await post({ model: MODEL, input: "" });
    expect(bad.status).toBe(400);
    expect(bad.headers.get("x-ratelimit-limit-requests")).toBe("60");
    expect(await bad.json()).toEqual({
      error: {
        message: "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        type: "invalid_request_error",
        param: null,
        code: null,
      },
    });
  });

  it("answers an RPM overflow with type requests and retry headers", async () => {
    server.mocks.setFaults({ openai: { rateLimits: { rpm: 2 } } });
    expect((await post({ model: MODEL, input: "a" })).status).toBe(200);
    expect((await post({ model: MODEL, input: "a" })).status).toBe(200);
    const res = await post({ model: MODEL, input: "a" });
    expect(res.status).toBe(429);
    const body = (await res.json()) as { error: { message: string; type: string; param: null; code: string } };
    expect(body.error).toMatchObject({ type: "requests", param: null, code: "rate_limit_exceeded" });
    expect(body.error.message).toMatch(/on requests per min \(RPM\): Limit 2, Used 2, Requested 1\. Please try again in [\d.]+m?s\./);
    expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(res.headers.get("x-ratelimit-remaining-requests")).toBe("0");
    const stats = server.mocks.stats();
    expect(stats.rateLimited.total).toBe(1);
    expect(stats.openai.rateLimitHits).toEqual({ requests: 1, tokens: 0 });
  });

  it("encodes base64 as little-endian float32", async () => {
    const res = await post({ model: MODEL, input: "delta", encoding_format: "base64", dimensions: 4 });
    const body = (await res.json()) as { data: Array<{ embedding: string }> };
    const bytes = Buffer.from(body.data[0]!.embedding, "base64");
    const decoded = Array.from({ length: 4 }, (_, i) => bytes.readFloatLE(i * 4));
    expect(decoded).toEqual(expectedEmbedding(MODEL, "delta", 4));
    expect(body.data[0]!.embedding).toBe(toBase64Float32(expectedEmbedding(MODEL, "delta", 4)));
  });

  it("refuses dimensions on ada-002 and out of range", async () => {
    const ada = await post({ model: "text-embedding-ada-002", input: "x", dimensions: 8 });
    expect(ada.status).toBe(400);
    expect(((await ada.json()) as { error: { message: string } }).error.message).toBe("This model does not support specifying dimensions.");
    const big = await post({ model: MODEL, input: "x", dimensions: 2000 });
    expect(big.status).toBe(400);
    expect(((await big.json()) as { error: { param: string } }).error.param).toBe("dimensions");
  });

  it("answers a 502 fault with the gateway's HTML page", async () => {
    server.mocks.setFaults({ openai: { bursts: [{ fault: 502, start: 1, count: 1 }] } });
    const res = await post({ model: MODEL, input: "x" });
    expect(res.status).toBe(502);
    expect(res.headers.get("content-type")).toBe("text/html");
    expect(await res.text()).toContain("502 Bad Gateway");
  });

  it("counts billed tokens per model in the stats", async () => {
    await post({ model: MODEL, input: ["hello world", "a b c"] });
    await post({ model: "text-embedding-3-large", input: "x" });
    const usage = server.mocks.stats().openai.usage;
    expect(usage[MODEL]).toEqual({ requests: 1, inputs: 2, prompt_tokens: 2 + 3 });
    expect(usage["text-embedding-3-large"]).toEqual({ requests: 1, inputs: 1, prompt_tokens: 1 });
  });
});

describe("properties", () => {
  const text = fc.string({ minLength: 1, maxLength: 200 }).filter((s) => s !== "");
  const model = fc.constantFrom("text-embedding-3-small", "text-embedding-3-large");

  // For any model, text and size, the vector is the same on every call, has the requested size and unit length.
  it("embeddings are deterministic, unit length and of the requested dimension", () => {
    fc.assert(
      fc.property(model, text, fc.integer({ min: 1, max: 1536 }), (m, t, d) => {
        const a = expectedEmbedding(m, t, d);
        expect(a).toHaveLength(d);
        expect(expectedEmbedding(m, t, d)).toEqual(a);
        expect(Math.abs(Math.hypot(...a) - 1)).toBeLessThan(1e-5);
      }),
      { numRuns: 100 },
    );
  });

  // For any batch of non-empty texts, the mock's usage equals the cl100k_base token count and each vector equals expectedEmbedding.
  it("usage equals the tokenizer's count and vectors match expectedEmbedding", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(text, { minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 64 }), async (inputs, d) => {
        const res = await post({ model: MODEL, input: inputs, encoding_format: "float", dimensions: d });
        const body = (await res.json()) as { data: Array<{ embedding: number[] }>; usage: { prompt_tokens: number; total_tokens: number } };
        const expected = inputs.reduce((n, s) => n + encode(s, { disallowedSpecial: new Set() }).length, 0);
        expect(body.usage).toEqual({ prompt_tokens: expected, total_tokens: expected });
        body.data.forEach((row, i) => {
          expect(row.embedding).toEqual(expectedEmbedding(MODEL, inputs[i]!, d));
        });
      }),
      { numRuns: 25 },
    );
  });

  // A string and its token ids embed to the same vector.
  it("a string and its tokens embed identically", () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 50 }), (s) => {
        expect(expectedEmbedding(MODEL, encode(s, { disallowedSpecial: new Set() }), 32)).toEqual(expectedEmbedding(MODEL, s, 32));
      }),
    );
  });
});
