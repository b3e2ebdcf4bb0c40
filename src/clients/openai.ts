/**
 * OpenAI embeddings client (SPEC §2, §4 embedding stage, §7 wire format).
 *
 * A thin layer over the official `openai` SDK that
 * - returns vectors as `Float32Array` in input order,
 * - reads the `x-ratelimit-*` headers of every answer so the rate limiter can follow them,
 * - turns every failure into a `PipelineError` with a stable code and the right class.
 *
 * Retries: the SDK is built with `maxRetries: 0`. The worker's resilience layer (rate limiter,
 * circuit breaker, job-level backoff) owns retries; letting the SDK retry too would multiply
 * attempts (2 SDK retries × N job attempts), hide 429s from the rate limiter and keep a slot busy
 * while the breaker thinks the call is one attempt. Exactly one retry policy.
 */
import OpenAI, { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from "openai";
import { PermanentError, PipelineError, TransientError, classifyStatus } from "../errors.ts";
import { redact } from "./redact.ts";

export interface EmbeddingsClientOptions {
  apiKey: string;
  /** e.g. `https://api.openai.com/v1`, or the mock's `http://127.0.0.1:4010/v1`. */
  baseURL?: string | undefined;
  model: string;
  /** Output dimensions (text-embedding-3-* only); omit for the model's default. */
  dimensions?: number | undefined;
  /** Per-request timeout in ms (SDK default: 10 minutes, far too long for a batch). */
  timeoutMs?: number | undefined;
  /** For tests or a custom agent; defaults to the global `fetch` (which msw intercepts). */
  fetch?: typeof fetch | undefined;
}

/** The rate-limit state OpenAI reported with an answer (`x-ratelimit-*`). */
export interface RateLimitInfo {
  limitRequests: number | undefined;
  limitTokens: number | undefined;
  remainingRequests: number | undefined;
  remainingTokens: number | undefined;
  /** Time until the request budget is fully replenished, ms. */
  resetRequestsMs: number | undefined;
  /** Time until the token budget is fully replenished, ms. */
  resetTokensMs: number | undefined;
}

export interface EmbeddingUsage {
  promptTokens: number;
  totalTokens: number;
}

export interface EmbedResult {
  /** One vector per input, in input order. */
  vectors: Float32Array[];
  usage: EmbeddingUsage;
  /** `undefined` when the answer carried no `x-ratelimit-*` header at all. */
  rateLimit: RateLimitInfo | undefined;
  model: string;
}

/** A model and its output dimensions (`undefined`: the model's default). */
export interface EmbedTarget {
  model: string;
  dimensions: number | undefined;
}

export interface EmbeddingsClient {
  readonly model: string;
  readonly dimensions: number | undefined;
  /**
   * Embed a batch. Throws a `PipelineError` (never a raw SDK error).
   * @param inputs 1..2048 non-empty strings (the API rejects an empty string anywhere).
   */
  embed(inputs: string[], signal?: AbortSignal, options?: { target?: EmbedTarget }): Promise<EmbedResult>;
}

/**
 * Create the embeddings client.
 *
 * @example
 * const client = createEmbeddingsClient({ apiKey, baseURL: "http://127.0.0.1:4010/v1", model: "text-embedding-3-small" });
 * const { vectors, usage, rateLimit } = await client.embed(["first chunk", "second chunk"], signal);
 */
export function createEmbeddingsClient(options: EmbeddingsClientOptions): EmbeddingsClient {
  const { apiKey, model, dimensions } = options;
  const sdk = new OpenAI({
    apiKey,
    baseURL: options.baseURL,
    maxRetries: 0, // see the file comment: the worker's resilience layer owns retries
    ...(options.timeoutMs !== undefined ? { timeout: options.timeoutMs } : {}),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });

  return {
    model,
    dimensions,
    async embed(inputs, signal, { target = { model, dimensions } } = {}) {
      if (inputs.length === 0) return { vectors: [], usage: { promptTokens: 0, totalTokens: 0 }, rateLimit: undefined, model: target.model };
      // The API fails the whole request on an empty string (whitespace is fine); say which one
      // here instead of spending a request and a rate-limit slot to learn it.
      const empty = inputs.findIndex((text) => text.length === 0);
      if (empty !== -1) {
        throw new PermanentError(
          "openai_bad_request",
          `Invalid 'input[${empty}]': the embeddings API rejects empty strings; drop or fill empty chunks before embedding`,
        );
      }
      let data: EmbeddingsAnswer;
      let response: Response;
      try {
        // base64 (a quarter of the JSON size), asked for explicitly so that the SDK hands the
        // strings back untouched and `toVectors` decodes them into one Float32Array. Left to the
        // SDK, every vector became a Buffer and then a `number[]` of doubles before our copy.
        ({ data, response } = await sdk.embeddings
          .create(
            {
              model: target.model,
              input: inputs,
              encoding_format: "base64",
              ...(target.dimensions !== undefined ? { dimensions: target.dimensions } : {}),
            },
            { signal },
          )
          .withResponse());
      } catch (err) {
        throw mapOpenAIError(err, apiKey);
      }
      return {
        vectors: toVectors(data, inputs.length, target.dimensions),
        usage: { promptTokens: data.usage?.prompt_tokens ?? 0, totalTokens: data.usage?.total_tokens ?? 0 },
        rateLimit: parseRateLimitHeaders(response.headers),
        model: data.model ?? target.model,
      };
    },
  };
}

/** The answer as asked for (base64), though a server may ignore `encoding_format` and send floats. */
type EmbeddingsAnswer = Omit<OpenAI.Embeddings.CreateEmbeddingResponse, "data"> & {
  data: Array<Omit<OpenAI.Embeddings.Embedding, "embedding"> & { embedding: string | number[] }>;
};

/**
 * Check the answer's shape (one finite vector per input, consistent length) and put the vectors
 * in input order. A malformed answer is transient: a faulty proxy or a fault-plan bad body may
 * answer correctly next time, and storing a wrong vector would be far worse than retrying.
 *
 * base64 vectors (little-endian float32, as the API and the SDK read them) are decoded straight
 * into one Float32Array for the whole batch, and each vector is a view of it: no per-vector
 * Buffer or number[] in between. A float answer (a server that ignores `encoding_format`) is
 * copied in.
 */
function toVectors(data: EmbeddingsAnswer, expected: number, dimensions: number | undefined): Float32Array[] {
  const bad = (why: string) => new TransientError("openai_bad_response", `OpenAI embeddings answer is malformed: ${why}`);
  if (!data || !Array.isArray(data.data)) throw bad("`data` is not an array");
  if (data.data.length !== expected) throw bad(`${data.data.length} embeddings for ${expected} inputs`);
  const out: Array<Float32Array | undefined> = new Array(expected);
  let width: number | undefined = dimensions;
  let block: Float32Array | undefined;
  let bytes: Buffer | undefined;
  for (const item of data.data) {
    const index = item?.index;
    if (!Number.isInteger(index) || index < 0 || index >= expected || out[index] !== undefined) {
      throw bad(`invalid or duplicate index ${String(index)}`);
    }
    const raw: unknown = item.embedding;
    const length = typeof raw === "string" ? Buffer.byteLength(raw, "base64") / Float32Array.BYTES_PER_ELEMENT : Array.isArray(raw) ? raw.length : undefined;
    if (length === undefined) throw bad(`embedding ${index} is neither a float array nor base64`);
    if (!Number.isInteger(length)) throw bad(`embedding ${index} is not a whole number of float32 values`);
    if (length === 0) throw bad(`embedding ${index} is empty`);
    width ??= length;
    if (length !== width) throw bad(`embedding ${index} has ${length} dimensions, expected ${width}`);
    block ??= new Float32Array(expected * width);
    const vector = block.subarray(index * width, (index + 1) * width);
    if (typeof raw === "string") {
      bytes ??= Buffer.from(block.buffer);
      if (bytes.write(raw, vector.byteOffset, vector.byteLength, "base64") !== vector.byteLength) throw bad(`embedding ${index} is not valid base64`);
    } else vector.set(raw as number[]);
    for (const v of vector) if (!Number.isFinite(v)) throw bad(`embedding ${index} holds a non-finite value`);
    out[index] = vector;
  }
  return out as Float32Array[];
}

// ---------------------------------------------------------------------------------------------
// Headers

const GO_DURATION_UNITS_MS: Record<string, number> = {
  h: 3_600_000,
  m: 60_000,
  s: 1000,
  ms: 1,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ns: 1e-6,
};

/**
 * Parse a Go `time.Duration` string, as OpenAI writes `x-ratelimit-reset-*` (`6m0s`, `1s`,
 * `12ms`, `1.2s`, `1h2m3.5s`, `0s`), into milliseconds. Returns `undefined` for anything else
 * rather than guessing; a bare number is read as seconds (some proxies rewrite the header).
 *
 * @example
 * parseGoDuration("6m0s") // 360000
 * parseGoDuration("1.2s") // 1200
 */
export function parseGoDuration(text: string | null | undefined): number | undefined {
  if (text == null) return undefined;
  const s = text.trim();
  if (s === "") return undefined;
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s) * 1000;
  const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/gy;
  let total = 0;
  let consumed = 0;
  let match: RegExpExecArray | null;
  while ((match = re.exec(s)) !== null) {
    total += Number(match[1]) * GO_DURATION_UNITS_MS[match[2]!]!;
    consumed = re.lastIndex;
  }
  if (consumed !== s.length) return undefined;
  return total;
}

function headerNumber(headers: Headers, name: string): number | undefined {
  const value = headers.get(name);
  if (value == null || value.trim() === "") return undefined;
  const n = Number(value);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}

/**
 * Read the six `x-ratelimit-*` headers. Returns `undefined` when none is present (e.g. an
 * Azure or proxy endpoint that does not send them); individual missing or unparsable headers
 * are `undefined` fields.
 */
export function parseRateLimitHeaders(headers: Headers): RateLimitInfo | undefined {
  const info: RateLimitInfo = {
    limitRequests: headerNumber(headers, "x-ratelimit-limit-requests"),
    limitTokens: headerNumber(headers, "x-ratelimit-limit-tokens"),
    remainingRequests: headerNumber(headers, "x-ratelimit-remaining-requests"),
    remainingTokens: headerNumber(headers, "x-ratelimit-remaining-tokens"),
    resetRequestsMs: parseGoDuration(headers.get("x-ratelimit-reset-requests")),
    resetTokensMs: parseGoDuration(headers.get("x-ratelimit-reset-tokens")),
  };
  return Object.values(info).some((v) => v !== undefined) ? info : undefined;
}

/**
 * How long a 429 asks us to wait, in ms: `retry-after-ms`, then `retry-after` (seconds or an
 * HTTP date), then the "Please try again in 2.812s" sentence of the error message.
 */
export function retryAfterMsFrom(headers: Headers | undefined, message: string | undefined, now: number = Date.now()): number | undefined {
  const ms = headers ? headerNumber(headers, "retry-after-ms") : undefined;
  if (ms !== undefined) return ms;
  const ra = headers?.get("retry-after");
  if (ra != null && ra.trim() !== "") {
    const seconds = Number(ra);
    if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
    const date = Date.parse(ra);
    if (Number.isFinite(date)) return Math.max(0, date - now);
  }
  const sentence = message?.match(/try again in ((?:\d+(?:\.\d*)?(?:ns|us|µs|μs|ms|s|m|h))+)/i);
  return sentence ? parseGoDuration(sentence[1]) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * Map anything the SDK throws to a `PipelineError`:
 *
 * | upstream | code | class |
 * |---|---|---|
 * | 429 `insufficient_quota` | `openai_insufficient_quota` | permanent (a retry cannot add credit) |
 * | 429 other (`rate_limit_exceeded`) | `openai_rate_limited`, with `retryAfterMs` | transient |
 * | 401 / 403 | `openai_unauthorized` | permanent |
 * | 400 / 404 / 422 / other 4xx | `openai_bad_request` | permanent |
 * | 408 / 409 / 5xx | `openai_unavailable` | transient |
 * | timeout | `timeout` | transient |
 * | caller's abort | `aborted` | transient |
 * | connection failure | `openai_connection` | transient |
 *
 * Messages are redacted (the 401 body names the key it received).
 */
export function mapOpenAIError(err: unknown, apiKey?: string): PipelineError {
  if (err instanceof PipelineError) return err;
  const clean = (m: string) => redact(m, [apiKey]);
  if (err instanceof APIUserAbortError) return new TransientError("aborted", "OpenAI request aborted by the caller", { cause: err });
  if (err instanceof APIConnectionTimeoutError) return new TransientError("timeout", `OpenAI request timed out: ${clean(err.message)}`, { cause: err });
  if (err instanceof APIConnectionError) {
    return new TransientError("openai_connection", `OpenAI connection failed: ${clean(describeCause(err))}`, { cause: err });
  }
  if (err instanceof APIError && typeof err.status === "number") {
    const status = err.status;
    const upstreamCode = typeof err.code === "string" ? err.code : undefined;
    const type = typeof err.type === "string" ? err.type : undefined;
    const message = clean(`OpenAI ${err.message}${upstreamCode ? ` (code ${upstreamCode})` : ""}`);
    if (status === 429) {
      if (upstreamCode === "insufficient_quota" || type === "insufficient_quota") {
        return new PermanentError("openai_insufficient_quota", message, { cause: err, status });
      }
      const retryAfterMs = retryAfterMsFrom(err.headers, err.message);
      return new TransientError("openai_rate_limited", message, { cause: err, status, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) });
    }
    if (status === 401 || status === 403) return new PermanentError("openai_unauthorized", message, { cause: err, status });
    if (classifyStatus(status) === "transient") {
      const retryAfterMs = retryAfterMsFrom(err.headers, undefined);
      return new TransientError("openai_unavailable", message, { cause: err, status, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) });
    }
    return new PermanentError("openai_bad_request", message, { cause: err, status });
  }
  if (err instanceof SyntaxError) {
    // The SDK parses the body itself; a truncated or non-JSON 200 lands here.
    return new TransientError("openai_bad_response", `OpenAI answered with a body that is not JSON: ${clean(err.message)}`, { cause: err });
  }
  const e = err instanceof Error ? err : new Error(String(err));
  if (e.name === "AbortError") return new TransientError("aborted", "OpenAI request aborted by the caller", { cause: e });
  return new TransientError("openai_unexpected", `OpenAI call failed: ${clean(e.message)}`, { cause: e });
}

/** "Connection error." says little; name the underlying cause (ECONNREFUSED, reset, …). */
function describeCause(err: Error): string {
  const parts = [err.message];
  let cause: unknown = err.cause;
  for (let depth = 0; cause instanceof Error && depth < 3; depth++) {
    const code = (cause as { code?: unknown }).code;
    parts.push(typeof code === "string" ? `${cause.message} [${code}]` : cause.message);
    cause = cause.cause;
  }
  return parts.join(": ");
}
