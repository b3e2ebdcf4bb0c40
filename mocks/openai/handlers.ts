/**
 * msw handlers for OpenAI's `POST /v1/embeddings`, speaking the real wire format: input forms,
 * `encoding_format`, `dimensions`, the limit errors and their bodies, RPM/TPM windows with the
 * `x-ratelimit-*` headers, quota and server errors, and bearer-key checks.
 */
import { http } from "msw";
import { goDuration } from "../shared/duration.ts";
import type { FaultDecision, OpenAIFaults } from "../shared/faults.ts";
import { faulted, gatewayPage, json, type MockContext } from "../shared/http.ts";
import { countInputTokens, EMBEDDING_MODELS, expectedEmbedding, LIMITS, toBase64Float32, validTokenIds } from "./embeddings.ts";
import { DEFAULT_LIMITS, type RateLimiter } from "./rate-limits.ts";
import { sha256Hex } from "../shared/rng.ts";

/** The route id of the embeddings endpoint in stats and fault plans. */
export const OPENAI_ROUTES = { embeddings: "openai.embeddings" } as const;

/** The organization the mock answers as (in headers and rate-limit messages). */
export const MOCK_ORGANIZATION = "org-mock";

/** What the OpenAI mock keeps between requests. */
export interface OpenAIState {
  rateLimiter: RateLimiter;
}

/** Options of the OpenAI mock. */
export interface OpenAIMockOptions {
  /** The only bearer key accepted. */
  apiKey: string;
}

export type ApiError = { message: string; type: string; param: string | null; code: string | null };

export function errorBody(error: ApiError, status: number, headers: Record<string, string> = {}): Response {
  return json({ error }, status, headers);
}

export function invalid(message: string, param: string | null = null, code: string | null = null): Response {
  return errorBody({ message, type: "invalid_request_error", param, code }, 400);
}

/** A request's JSON object body, or the API's 400 for a body that is not one. */
export async function readJsonObject(request: Request): Promise<Record<string, unknown> | Response> {
  try {
    const parsed: unknown = JSON.parse(await request.text());
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object");
    return parsed as Record<string, unknown>;
  } catch {
    return invalid(
      "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
    );
  }
}

/** Masks a key as the API does in its 401 message: `sk-abc***************wxyz`. */
function maskKey(key: string): string {
  if (key.length <= 8) return "*".repeat(key.length);
  return `${key.slice(0, 3)}${"*".repeat(Math.min(key.length - 7, 20))}${key.slice(-4)}`;
}

const INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.";

function rateLimitMessage(model: string, type: "requests" | "tokens", limit: number, used: number, requested: number, retryMs: number): string {
  const which = type === "tokens" ? "tokens per min (TPM)" : "requests per min (RPM)";
  return (
    `Rate limit reached for ${model} in organization ${MOCK_ORGANIZATION} on ${which}: ` +
    `Limit ${limit}, Used ${used}, Requested ${requested}. Please try again in ${goDuration(retryMs)}. ` +
    `Visit https://platform.openai.com/account/rate-limits to learn more.`
  );
}

function retryHeaders(ms: number): Record<string, string> {
  return { "retry-after": String(Math.max(1, Math.ceil(ms / 1000))), "retry-after-ms": String(Math.ceil(ms)) };
}

type Input = string | number[];

/** Normalizes `input` to a list, or says why it is invalid. */
function readInputs(raw: unknown): { inputs: Input[]; single: boolean } | Response {
  const isTokens = (v: unknown): v is number[] => Array.isArray(v) && v.length > 0 && v.every((t) => typeof t === "number");
  if (typeof raw === "string") return { inputs: [raw], single: true };
  if (isTokens(raw)) return { inputs: [raw], single: true };
  if (Array.isArray(raw) && raw.length > 0) {
    if (raw.every((v) => typeof v === "string")) return { inputs: raw as string[], single: false };
    if (raw.every(isTokens)) return { inputs: raw, single: false };
  }
  return invalid(INVALID_INPUT);
}

/** An embeddings request is its model, dimensions and inputs (hashed); a body that is not JSON is its bytes. */
async function embeddingsFingerprint(request: Request): Promise<string> {
  const text = await request.text();
  try {
    const body = JSON.parse(text) as { model?: unknown; input?: unknown; dimensions?: unknown };
    return `${String(body.model)}:${String(body.dimensions ?? "")}:${sha256Hex(JSON.stringify(body.input ?? null)).slice(0, 16)}`;
  } catch {
    return `raw:${sha256Hex(text).slice(0, 16)}`;
  }
}

/** The bearer-key check every OpenAI route makes: a 401 as the API words it, or undefined when the key is right. */
export function checkBearer(request: Request, apiKey: string): Response | undefined {
  const auth = request.headers.get("authorization") ?? "";
  const key = /^Bearer\s+(.+)$/i.exec(auth)?.[1]?.trim();
  if (!key) {
    return errorBody(
      {
        message:
          "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
        type: "invalid_request_error",
        param: null,
        code: null,
      },
      401,
    );
  }
  if (key !== apiKey) {
    return errorBody(
      {
        message: `Incorrect API key provided: ${maskKey(key)}. You can find your API key at https://platform.openai.com/account/api-keys.`,
        type: "invalid_request_error",
        param: null,
        code: "invalid_api_key",
      },
      401,
    );
  }

  return undefined;
}

/** A valid embeddings request, read and checked. */
export interface EmbeddingsRequest {
  model: string;
  inputs: Input[];
  dimensions: number;
  format: "float" | "base64";
  /** Tokens the request bills. */
  total: number;
}

/**
 * Checks an embeddings request body as the API does (model, input forms, `encoding_format`,
 * `dimensions`, the per-input and per-request limits): the request, or the 4xx answer.
 * The synchronous endpoint and each line of a batch go through this same check.
 */
export function validateEmbeddingsBody(body: Record<string, unknown>): EmbeddingsRequest | Response {
  const model = body.model;
  if (typeof model !== "string" || model === "") return invalid("you must provide a model parameter");
  if (body.input === undefined) return invalid("'input' is a required property", "input");
  const spec = EMBEDDING_MODELS[model];
  if (!spec) {
    return errorBody(
      {
        message: `The model \`${model}\` does not exist or you do not have access to it.`,
        type: "invalid_request_error",
        param: null,
        code: "model_not_found",
      },
      404,
    );
  }

  const format = body.encoding_format ?? "float";
  if (format !== "float" && format !== "base64") {
    return invalid(
      `Invalid value for 'encoding_format': expected one of 'float' or 'base64', got ${JSON.stringify(format)}.`,
      "encoding_format",
      "invalid_value",
    );
  }
  let dimensions = spec.nativeDimensions;
  if (body.dimensions !== undefined && body.dimensions !== null) {
    if (!spec.supportsDimensions) return invalid("This model does not support specifying dimensions.", "dimensions");
    const d = body.dimensions;
    if (typeof d !== "number" || !Number.isInteger(d) || d < 1 || d > spec.nativeDimensions) {
      return invalid(
        `Invalid value for 'dimensions' = ${JSON.stringify(d)}. Must be an integer between 1 and ${spec.nativeDimensions}.`,
        "dimensions",
        "invalid_value",
      );
    }
    dimensions = d;
  }

  const read = readInputs(body.input);
  if (read instanceof Response) return read;
  const { inputs, single } = read;
  if (inputs.length > LIMITS.maxInputs) return invalid("Invalid 'input': array length must be 2048 or less.", "input");
  // An empty string anywhere fails the whole request; whitespace is accepted.
  if (inputs.some((i) => i === "")) return invalid(INVALID_INPUT);
  let total = 0;
  for (let i = 0; i < inputs.length; i++) {
    const input = inputs[i]!;
    const where = single ? "input" : `input[${i}]`;
    if (typeof input !== "string" && !validTokenIds(input)) {
      return invalid(`Invalid '${where}': token ids must be integers of the model's vocabulary.`, where, "invalid_value");
    }
    const n = countInputTokens(input);
    if (n > LIMITS.maxTokensPerInput) return invalid(`Invalid '${where}': maximum input length is 8192 tokens.`, where);
    total += n;
  }
  if (total > LIMITS.maxTokensPerRequest) {
    return errorBody(
      { message: `Requested ${total} tokens, max 300000 tokens per request`, type: "max_tokens_per_request", param: null, code: "max_tokens_per_request" },
      400,
    );
  }

  return { model, inputs, dimensions, format, total };
}

/** The body of a successful embeddings answer: one deterministic vector per input, and its usage. */
export function embeddingsAnswer(request: EmbeddingsRequest) {
  const { model, inputs, dimensions, format, total } = request;
  const data = inputs.map((input, index) => {
    const vector = expectedEmbedding(model, input, dimensions);
    return { object: "embedding", index, embedding: format === "base64" ? toBase64Float32(vector) : vector };
  });
  return { object: "list", data, model, usage: { prompt_tokens: total, total_tokens: total } };
}

/** Builds the OpenAI handlers over `state`. */
export function createOpenAIHandlers(ctx: MockContext, state: OpenAIState, options: OpenAIMockOptions) {
  const route = OPENAI_ROUTES.embeddings;

  const errorResponse = async (fault: number | "insufficient_quota", decision: FaultDecision, request: Request): Promise<Response> => {
    if (fault === "insufficient_quota") {
      return errorBody(
        {
          message:
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
          type: "insufficient_quota",
          param: null,
          code: "insufficient_quota",
        },
        429,
      );
    }
    if (fault === 429) {
      const rpm = ctx.faults.plan.openai?.rateLimits?.rpm ?? DEFAULT_LIMITS.rpm;
      const waitMs = Math.max(1, Math.round(60_000 / rpm)) + Math.floor(decision.rng() * 1000);
      const model = await request
        .json()
        .then((b: { model?: unknown }) => (typeof b.model === "string" ? b.model : "text-embedding-3-small"))
        .catch(() => "text-embedding-3-small");
      return errorBody(
        { message: rateLimitMessage(model, "requests", rpm, rpm, 1, waitMs), type: "requests", param: null, code: "rate_limit_exceeded" },
        429,
        retryHeaders(waitMs),
      );
    }
    if (fault === 502 || fault === 504) return gatewayPage(fault);
    if (fault === 503) {
      return errorBody({ message: "The engine is currently overloaded, please try again later.", type: "server_error", param: null, code: null }, 503);
    }
    return errorBody(
      { message: "The server had an error while processing your request. Sorry about that!", type: "server_error", param: null, code: null },
      fault,
    );
  };

  const decorate = async (response: Response, request: Request, decision: FaultDecision): Promise<Response> => {
    const headers = new Headers(response.headers);
    headers.set("openai-version", "2020-10-01");
    headers.set("openai-organization", MOCK_ORGANIZATION);
    headers.set(
      "x-request-id",
      `req_${Math.floor(decision.rng() * 2 ** 32)
        .toString(16)
        .padStart(8, "0")}${decision.n.toString(16).padStart(8, "0")}`,
    );
    // Answers from the limiter already carry the window headers; only errors raised before it
    // (validation, injected faults) need the body read again to know the model.
    // Every answer naming a known model carries the window headers, a refused key's 401 included.
    if (headers.has("x-ratelimit-limit-requests")) {
      return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
    }
    try {
      const body = (await request.json()) as { model?: unknown };
      if (typeof body.model === "string" && EMBEDDING_MODELS[body.model]) {
        headers.set("openai-model", body.model);
        for (const [k, v] of Object.entries(state.rateLimiter.headers(body.model))) if (!headers.has(k)) headers.set(k, v);
      }
    } catch {
      // Not JSON: the answer is a 400 and carries no rate-limit headers.
    }
    return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
  };

  const embeddings = faulted({ ctx, service: "openai", route, errorResponse, decorate, fingerprint: embeddingsFingerprint }, async ({ request }) => {
    const started = ctx.now();
    const refused = checkBearer(request, options.apiKey);
    if (refused) return refused;

    const body = await readJsonObject(request);
    if (body instanceof Response) return body;
    const valid = validateEmbeddingsBody(body);
    if (valid instanceof Response) return valid;
    const { model, inputs, total } = valid;

    const decision = state.rateLimiter.take(model, total);
    if (!decision.ok) {
      ctx.stats.rateLimitHits[decision.type]++;
      if (decision.retryAfterMs === undefined) {
        return errorBody(
          {
            message: `Request too large for ${model} in organization ${MOCK_ORGANIZATION} on tokens per min (TPM): Limit ${decision.limit}, Requested ${decision.requested}. The input or output tokens must be reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more.`,
            type: decision.type,
            param: null,
            code: "rate_limit_exceeded",
          },
          429,
          { ...decision.headers, "openai-model": model },
        );
      }
      return errorBody(
        {
          message: rateLimitMessage(model, decision.type, decision.limit, decision.used, decision.requested, decision.retryAfterMs),
          type: decision.type,
          param: null,
          code: "rate_limit_exceeded",
        },
        429,
        { ...decision.headers, "openai-model": model, ...retryHeaders(decision.retryAfterMs) },
      );
    }

    ctx.stats.recordUsage(model, inputs.length, total);
    return json(embeddingsAnswer(valid), 200, {
      ...decision.headers,
      "openai-model": model,
      "openai-processing-ms": String(Math.max(1, Math.round(ctx.now() - started))),
    });
  });

  return [http.post("*/v1/embeddings", embeddings)];
}

/** The rate-limit settings for `model` from the plan in force. */
export function openAILimitsFor(plan: OpenAIFaults | undefined, model: string): { rpm: number; tpm: number } {
  const perModel = plan?.rateLimits?.models?.[model];
  return {
    rpm: perModel?.rpm ?? plan?.rateLimits?.rpm ?? DEFAULT_LIMITS.rpm,
    tpm: perModel?.tpm ?? plan?.rateLimits?.tpm ?? DEFAULT_LIMITS.tpm,
  };
}
