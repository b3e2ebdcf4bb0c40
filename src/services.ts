/**
 * Wiring: from a validated `Config` to the clients the stages use, each behind its circuit
 * breaker, and OpenAI behind the rate limiter. The only place that knows both the config and
 * the clients; stages receive the result as `ctx.services`.
 */
import type { Config } from "./config.ts";
import { createLlamaParseClient, type LlamaParseClient } from "./clients/llamaparse.ts";
import { createEmbeddingsClient } from "./clients/openai.ts";
import { createStorageClient, type ObjectStorage } from "./clients/storage.ts";
import { createBreakers, type Breakers, type ServiceBreaker } from "./resilience/breakers.ts";
import { OpenAIRateLimiter, RateLimitedEmbedder } from "./resilience/rateLimiter.ts";
import type { PipelineServices } from "./stages/services.ts";

/** The API allows 300,000 tokens in one embeddings request. */
const OPENAI_MAX_TOKENS_PER_REQUEST = 300_000;

export interface WiredServices extends PipelineServices {
  breakers: Breakers;
  limiter: OpenAIRateLimiter;
}

export function createPipelineServices(config: Config): WiredServices {
  const breakers = createBreakers({
    openai: { callTimeoutMs: config.OPENAI_TIMEOUT_MS },
    llamaparse: { callTimeoutMs: config.LLAMAPARSE_TIMEOUT_MS },
    storage: { callTimeoutMs: config.STORAGE_TIMEOUT_MS },
  });
  const limiter = new OpenAIRateLimiter({ requestsPerMinute: config.OPENAI_RPM, tokensPerMinute: config.OPENAI_TPM });
  const embedder = new RateLimitedEmbedder({
    client: createEmbeddingsClient({
      apiKey: config.OPENAI_API_KEY,
      baseURL: config.OPENAI_BASE_URL,
      model: config.EMBED_MODEL,
      dimensions: config.EMBED_DIMENSIONS,
      timeoutMs: config.OPENAI_TIMEOUT_MS,
    }),
    limiter,
    breaker: breakers.openai,
    // A 429 is "slow down", not a failure: after pausing every caller for the time the server
    // asked, retry here a few times before it costs the job an attempt.
    rateLimitRetries: 5,
  });
  const storage = guard(
    createStorageClient({ supabaseUrl: config.SUPABASE_URL, serviceRoleKey: config.SUPABASE_SERVICE_ROLE_KEY, bucket: config.STORAGE_BUCKET, timeoutMs: config.STORAGE_TIMEOUT_MS }),
    breakers.storage,
  );
  const llamaparse = guard(
    createLlamaParseClient({ apiKey: config.LLAMA_CLOUD_API_KEY, baseURL: config.LLAMA_CLOUD_BASE_URL, timeoutMs: config.LLAMAPARSE_TIMEOUT_MS }),
    breakers.llamaparse,
  );
  return {
    storage,
    llamaparse,
    embedder,
    breakers,
    limiter,
    settings: {
      webhookUrl: new URL("/webhooks/llamaparse", config.WEBHOOK_BASE_URL).toString(),
      webhookDeadlineMs: config.WEBHOOK_DEADLINE_SECONDS * 1000,
      reconcilePollMs: Math.max(1000, Math.min(30_000, config.WEBHOOK_DEADLINE_SECONDS * 250)),
      embedModel: config.EMBED_MODEL,
      embedVersion: embedVersion(config),
      embedBatchSize: config.EMBED_BATCH_SIZE,
      embedMaxTokensPerRequest: OPENAI_MAX_TOKENS_PER_REQUEST,
      chunkMaxTokens: config.CHUNK_MAX_TOKENS,
      chunkOverlapTokens: config.CHUNK_OVERLAP_TOKENS,
      chunkWriteBatch: 200,
      uploadMaxBytes: config.UPLOAD_MAX_BYTES,
    },
  };
}

/** `embed_version`: what, besides the model name, decides the vectors (here the dimensions). */
export function embedVersion(config: Pick<Config, "EMBED_MODEL" | "EMBED_DIMENSIONS">): string {
  const defaults: Record<string, number> = { "text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536 };
  return `d${config.EMBED_DIMENSIONS ?? defaults[config.EMBED_MODEL] ?? 0}`;
}

/** Every method of `client` runs through `breaker`: fail fast while the service is down. */
function guard<T extends LlamaParseClient | ObjectStorage>(client: T, breaker: ServiceBreaker): T {
  return new Proxy(client, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => breaker.execute(() => value.apply(target, args));
    },
  });
}
