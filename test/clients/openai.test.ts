/**
 * The embeddings client against small in-process handlers that answer like the real API
 * (SPEC §7): base64 by default, float on request, `x-ratelimit-*` on every answer, and the real
 * error bodies.
 */
import { http, HttpResponse } from "msw";
import { setupServer } from "msw/node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createEmbeddingsClient, parseGoDuration, parseRateLimitHeaders, retryAfterMsFrom } from "../../src/clients/openai.ts";
import { rejectionOf } from "../support/errors.ts";

const BASE = "http://openai.test/v1";
const API_KEY = "sk-test-0123456789abcdefghij";

const RATE_HEADERS = {
  "x-ratelimit-limit-requests": "3000",
  "x-ratelimit-limit-tokens": "1000000",
  "x-ratelimit-remaining-requests": "2999",
  "x-ratelimit-remaining-tokens": "999990",
  "x-ratelimit-reset-requests": "20ms",
  "x-ratelimit-reset-tokens": "6m0s",
};

/** A recognisable vector for input i: [i, len, 0.25, -1.5, 0, 0, …] of `dims` values. */
function vectorFor(input: string, i: number, dims = 4): number[] {
  return [i, input.length, 0.25, -1.5, ...new Array<number>(Math.max(0, dims - 4)).fill(0)];
}

function toBase64(values: number[]): string {
  const f = new Float32Array(values);
  return Buffer.from(f.buffer).toString("base64");
}

type Body = { input: string | string[]; model: string; encoding_format?: string; dimensions?: number };
const seen: Body[] = [];

function embeddingsOk(extraHeaders: Record<string, string> = {}) {
  return http.post(`${BASE}/embeddings`, async ({ request }) => {
    const body = (await request.json()) as Body;
    seen.push(body);
    const inputs = Array.isArray(body.input) ? body.input : [body.input];
    // Answer out of order on purpose: the client must order by `index`.
    const data = inputs
      .map((text, index) => ({
        object: "embedding",
        index,
        embedding: body.encoding_format === "base64" ? toBase64(vectorFor(text, index, body.dimensions)) : vectorFor(text, index, body.dimensions),
      }))
      .reverse();
    return HttpResponse.json(
      { object: "list", data, model: body.model, usage: { prompt_tokens: 7, total_tokens: 7 } },
      { headers: { ...RATE_HEADERS, ...extraHeaders } },
    );
  });
}

function openaiError(status: number, error: { message: string; type: string; code: string | null; param?: null }, headers: Record<string, string> = {}) {
  return http.post(`${BASE}/embeddings`, () => HttpResponse.json({ error: { param: null, ...error } }, { status, headers: { ...RATE_HEADERS, ...headers } }));
}

const server = setupServer();
beforeAll(() => server.listen({ onUnhandledFrame: "error" }));
afterEach(() => {
  server.resetHandlers();
  seen.length = 0;
});
afterAll(() => server.close());

const client = () => createEmbeddingsClient({ apiKey: API_KEY, baseURL: BASE, model: "text-embedding-3-small" });

describe("embed", () => {
  it("asks for base64 by default and returns the SDK-decoded float32 vectors in input order", async () => {
    server.use(embeddingsOk());
    const result = await client().embed(["alpha", "be"]);
    expect(seen[0]!.encoding_format).toBe("base64");
    expect(result.vectors).toHaveLength(2);
    expect(result.vectors[0]).toBeInstanceOf(Float32Array);
    expect(Array.from(result.vectors[0]!)).toEqual([0, 5, 0.25, -1.5]);
    expect(Array.from(result.vectors[1]!)).toEqual([1, 2, 0.25, -1.5]);
    expect(result.usage).toEqual({ promptTokens: 7, totalTokens: 7 });
    expect(result.model).toBe("text-embedding-3-small");
  });

  it("decodes float32 values exactly (no float64 rounding drift)", async () => {
    // biome-ignore lint/suspicious/noApproximativeNumericConstant: an arbitrary value with many digits, not e
    const values = [0.1, 1 / 3, -2.718281828];
    server.use(
      http.post(`${BASE}/embeddings`, () =>
        HttpResponse.json(
          { object: "list", data: [{ object: "embedding", index: 0, embedding: toBase64(values) }], model: "m", usage: { prompt_tokens: 1, total_tokens: 1 } },
          { headers: RATE_HEADERS },
        ),
      ),
    );
    const [vector] = (await client().embed(["x"])).vectors;
    expect(Array.from(vector!)).toEqual(Array.from(new Float32Array(values)));
  });

  it("accepts a float answer too (a server that ignores encoding_format)", async () => {
    server.use(
      http.post(`${BASE}/embeddings`, () =>
        HttpResponse.json(
          { object: "list", data: [{ object: "embedding", index: 0, embedding: [0.5, -0.5] }], model: "m", usage: { prompt_tokens: 1, total_tokens: 1 } },
          { headers: RATE_HEADERS },
        ),
      ),
    );
    const result = await client().embed(["x"]);
    expect(Array.from(result.vectors[0]!)).toEqual([0.5, -0.5]);
  });

  it("sends model, input array and dimensions", async () => {
    server.use(embeddingsOk());
    const result = await createEmbeddingsClient({ apiKey: API_KEY, baseURL: BASE, model: "text-embedding-3-large", dimensions: 256 }).embed(["a"]);
    expect(seen[0]).toMatchObject({ model: "text-embedding-3-large", input: ["a"], dimensions: 256 });
    expect(result.vectors[0]).toHaveLength(256);
  });

  it("rejects vectors whose length differs from the requested dimensions", async () => {
    const c = createEmbeddingsClient({ apiKey: API_KEY, baseURL: BASE, model: "text-embedding-3-large", dimensions: 256 });
    server.use(
      http.post(`${BASE}/embeddings`, () =>
        HttpResponse.json({
          object: "list",
          data: [{ object: "embedding", index: 0, embedding: [1, 2, 3, 4] }],
          model: "m",
          usage: { prompt_tokens: 1, total_tokens: 1 },
        }),
      ),
    );
    expect(await rejectionOf(c.embed(["a"]))).toMatchObject({ code: "openai_bad_response", errorClass: "transient" });
  });

  it("rejects base64 that is not whole float32 values, or not base64, as a transient bad response", async () => {
    for (const embedding of [toBase64([1, 2]).slice(0, -4), "!".repeat(16)]) {
      server.use(
        http.post(`${BASE}/embeddings`, () =>
          HttpResponse.json({ object: "list", data: [{ object: "embedding", index: 0, embedding }], model: "m", usage: { prompt_tokens: 1, total_tokens: 1 } }),
        ),
      );
      expect(await rejectionOf(client().embed(["a"]))).toMatchObject({ code: "openai_bad_response", errorClass: "transient" });
    }
  });

  it("reads the x-ratelimit-* headers of the answer", async () => {
    server.use(embeddingsOk());
    const { rateLimit } = await client().embed(["a"]);
    expect(rateLimit).toEqual({
      limitRequests: 3000,
      limitTokens: 1_000_000,
      remainingRequests: 2999,
      remainingTokens: 999_990,
      resetRequestsMs: 20,
      resetTokensMs: 360_000,
    });
  });

  it("returns an empty result for no inputs without calling the API", async () => {
    const result = await client().embed([]);
    expect(result.vectors).toEqual([]);
    expect(seen).toHaveLength(0);
  });

  it("refuses an empty input locally, naming its index, without calling the API", async () => {
    server.use(embeddingsOk());
    const err = await rejectionOf(client().embed(["a", " ", ""]));
    expect(err).toMatchObject({ code: "openai_bad_request", errorClass: "permanent" });
    expect(err.message).toContain("input[2]");
    expect(seen).toHaveLength(0);
  });

  it("rejects an answer with the wrong number of embeddings as a transient bad response", async () => {
    server.use(
      http.post(`${BASE}/embeddings`, () => HttpResponse.json({ object: "list", data: [], model: "m", usage: { prompt_tokens: 1, total_tokens: 1 } })),
    );
    const err = await rejectionOf(client().embed(["a"]));
    expect(err).toMatchObject({ code: "openai_bad_response", errorClass: "transient" });
  });
});

describe("error mapping", () => {
  it("429 rate_limit_exceeded → transient, retryAfterMs from retry-after-ms", async () => {
    server.use(
      openaiError(
        429,
        {
          message:
            "Rate limit reached for text-embedding-3-small on tokens per min (TPM): Limit 1000000, Used 999000, Requested 5000. Please try again in 2.812s.",
          type: "tokens",
          code: "rate_limit_exceeded",
        },
        { "retry-after-ms": "1500", "retry-after": "3" },
      ),
    );
    const err = await rejectionOf(client().embed(["a"]));
    expect(err).toMatchObject({ code: "openai_rate_limited", errorClass: "transient", status: 429, retryAfterMs: 1500 });
  });

  it("429 without retry-after-ms → retry-after seconds", async () => {
    server.use(
      openaiError(429, { message: "Rate limit reached. Please try again in 2.812s.", type: "requests", code: "rate_limit_exceeded" }, { "retry-after": "3" }),
    );
    expect((await rejectionOf(client().embed(["a"]))).retryAfterMs).toBe(3000);
  });

  it("429 without headers → the 'Please try again in …' sentence", async () => {
    server.use(
      openaiError(429, {
        message:
          "Rate limit reached for text-embedding-3-small on tokens per min (TPM): Limit 1000000, Used 999000, Requested 5000. Please try again in 2.812s. Visit https://platform.openai.com/account/rate-limits to learn more.",
        type: "tokens",
        code: "rate_limit_exceeded",
      }),
    );
    const err = await rejectionOf(client().embed(["a"]));
    expect(err.retryAfterMs).toBeCloseTo(2812, 6);
    expect(err.transient).toBe(true);
  });

  it("429 insufficient_quota → permanent", async () => {
    server.use(
      openaiError(429, {
        message: "You exceeded your current quota, please check your plan and billing details.",
        type: "insufficient_quota",
        code: "insufficient_quota",
      }),
    );
    const err = await rejectionOf(client().embed(["a"]));
    expect(err).toMatchObject({ code: "openai_insufficient_quota", errorClass: "permanent", status: 429 });
  });

  it.each([500, 503])("%i server_error → transient", async (status) => {
    server.use(openaiError(status, { message: "The server had an error while processing your request.", type: "server_error", code: null }));
    expect(await rejectionOf(client().embed(["a"]))).toMatchObject({ code: "openai_unavailable", errorClass: "transient", status });
  });

  it.each([408, 409])("%i → transient", async (status) => {
    server.use(openaiError(status, { message: "try later", type: "server_error", code: null }));
    expect(await rejectionOf(client().embed(["a"]))).toMatchObject({ errorClass: "transient", status });
  });

  it("400 invalid input → permanent, with the upstream code in the message", async () => {
    server.use(
      openaiError(400, { message: "Requested 300001 tokens, max 300000 tokens per request", type: "max_tokens_per_request", code: "max_tokens_per_request" }),
    );
    const err = await rejectionOf(client().embed(["a"]));
    expect(err).toMatchObject({ code: "openai_bad_request", errorClass: "permanent", status: 400 });
    expect(err.message).toContain("max_tokens_per_request");
  });

  it("401 → permanent, and the key never appears in the message", async () => {
    server.use(
      openaiError(401, {
        message: `Incorrect API key provided: ${API_KEY}. You can find your API key at https://platform.openai.com/account/api-keys.`,
        type: "invalid_request_error",
        code: "invalid_api_key",
      }),
    );
    const err = await rejectionOf(client().embed(["a"]));
    expect(err).toMatchObject({ code: "openai_unauthorized", errorClass: "permanent", status: 401 });
    expect(err.message).not.toContain(API_KEY);
    expect(err.message).toContain("[redacted]");
  });

  it("a network failure → transient", async () => {
    server.use(http.post(`${BASE}/embeddings`, () => HttpResponse.error()));
    expect(await rejectionOf(client().embed(["a"]))).toMatchObject({ code: "openai_connection", errorClass: "transient" });
  });

  it("a timeout → transient `timeout`", async () => {
    server.use(
      http.post(`${BASE}/embeddings`, async () => {
        await new Promise((r) => setTimeout(r, 200));
        return HttpResponse.json({});
      }),
    );
    const c = createEmbeddingsClient({ apiKey: API_KEY, baseURL: BASE, model: "text-embedding-3-small", timeoutMs: 20 });
    expect(await rejectionOf(c.embed(["a"]))).toMatchObject({ code: "timeout", errorClass: "transient" });
  });

  it("the caller's abort → transient `aborted`", async () => {
    server.use(embeddingsOk());
    const ac = new AbortController();
    ac.abort();
    expect(await rejectionOf(client().embed(["a"], ac.signal))).toMatchObject({ code: "aborted", errorClass: "transient" });
  });
});

describe("parseGoDuration", () => {
  it.each([
    ["6m0s", 360_000],
    ["1s", 1000],
    ["12ms", 12],
    ["1.2s", 1200],
    ["0s", 0],
    ["1h2m3.5s", 3_723_500],
    ["250us", 0.25],
    ["500ns", 0.0005],
    ["2", 2000],
  ])("%s → %d ms", (text, ms) => {
    expect(parseGoDuration(text)).toBeCloseTo(ms, 9);
  });

  it.each(["", "soon", "1x", "s", "1s garbage", "-1s"])("rejects %j", (text) => {
    expect(parseGoDuration(text)).toBeUndefined();
  });
});

describe("rate-limit and retry-after headers", () => {
  it("is undefined when no x-ratelimit header is present, and tolerates a partial set", () => {
    expect(parseRateLimitHeaders(new Headers())).toBeUndefined();
    expect(parseRateLimitHeaders(new Headers({ "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "bogus" }))).toEqual({
      limitRequests: undefined,
      limitTokens: undefined,
      remainingRequests: undefined,
      remainingTokens: 10,
      resetRequestsMs: undefined,
      resetTokensMs: undefined,
    });
  });

  it("reads retry-after as an HTTP date", () => {
    const now = Date.parse("2025-01-01T00:00:00Z");
    expect(retryAfterMsFrom(new Headers({ "retry-after": "Wed, 01 Jan 2025 00:00:05 GMT" }), undefined, now)).toBe(5000);
  });

  it("reads 'try again in 20ms' and '1m30s' from the message", () => {
    expect(retryAfterMsFrom(undefined, "Please try again in 20ms.")).toBe(20);
    expect(retryAfterMsFrom(undefined, "Please try again in 1m30s.")).toBe(90_000);
    expect(retryAfterMsFrom(undefined, "no hint")).toBeUndefined();
  });
});
