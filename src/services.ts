/**
 * Wiring: from a validated `Config` to the clients the stages use, each behind its circuit
 * breaker, and OpenAI behind the rate limiter. The only place that knows both the config and
 * the clients; stages receive the result as `ctx.services`.
 */
import type { Config } from "./config.ts";
import { coerceError } from "./errors.ts";
import { createLlamaParseClient, type LlamaParseClient } from "./clients/llamaparse.ts";
import { createEmbeddingsClient } from "./clients/openai.ts";
import { createBatchEmbeddingsClient, type BatchEmbeddingsClient } from "./clients/openaiBatch.ts";
import { createStorageClient, type ObjectStorage } from "./clients/storage.ts";
import { llamaparseOperation, openaiOperation, storageOperation } from "./clients/operations.ts";
import { tracedFetch } from "./tracing.ts";
import { createBreakers, type Breakers, type ServiceBreaker } from "./resilience/breakers.ts";
import { budgetKey, LocalGovernor, SharedGovernor, type Governor } from "./resilience/governor.ts";
import { OpenAIRateLimiter, RateLimitedEmbedder } from "./resilience/rateLimiter.ts";
import type { Logger } from "./logger.ts";
import type pg from "pg";
import type { PipelineServices } from "./stages/services.ts";
import { embedVersionOf } from "./profiles/profiles.ts";

/** The API allows 300,000 tokens in one embeddings request. */
const OPENAI_MAX_TOKENS_PER_REQUEST = 300_000;

/** LlamaParse has no token budget; its governor paces requests only. */
const NO_TOKEN_LIMIT = 100_000_000;

export interface WiredServices extends PipelineServices {
  breakers: Breakers;
  /** The OpenAI embeddings budget (shared by the fleet when `RATE_GOVERNOR=shared` and a database is given). */
  governor: Governor;
}

export interface ServiceWiring {
  /** Where the shared rate budgets live; without it each process paces alone. */
  db?: pg.Pool | undefined;
  /** Holder name on reservations (the worker id). */
  holder?: string | undefined;
  log?: Logger | undefined;
}

export function createPipelineServices(config: Config, wiring: ServiceWiring = {}): WiredServices {
  const breakers = createBreakers({
    openai: { callTimeoutMs: config.OPENAI_TIMEOUT_MS },
    llamaparse: { callTimeoutMs: config.LLAMAPARSE_TIMEOUT_MS },
    storage: { callTimeoutMs: config.STORAGE_TIMEOUT_MS },
  });
  const governor = createGovernor(config, wiring, {
    provider: "openai",
    apiKey: config.OPENAI_API_KEY,
    model: config.EMBED_MODEL,
    rpm: config.OPENAI_RPM,
    tpm: config.OPENAI_TPM,
  });
  const embedder = new RateLimitedEmbedder({
    client: createEmbeddingsClient({
      apiKey: config.OPENAI_API_KEY,
      baseURL: config.OPENAI_BASE_URL,
      model: config.EMBED_MODEL,
      dimensions: config.EMBED_DIMENSIONS,
      timeoutMs: config.OPENAI_TIMEOUT_MS,
      fetch: tracedFetch("openai", openaiOperation),
    }),
    limiter: governor,
    breaker: breakers.openai,
    // A 429 is "slow down", not a failure: after pausing every caller for the time the server
    // asked, retry here a few times before it costs the job an attempt.
    rateLimitRetries: 5,
  });
  const storage = guard(
    createStorageClient({
      supabaseUrl: config.SUPABASE_URL,
      serviceRoleKey: config.SUPABASE_SERVICE_ROLE_KEY,
      bucket: config.STORAGE_BUCKET,
      timeoutMs: config.STORAGE_TIMEOUT_MS,
      fetch: tracedFetch("storage", storageOperation),
    }),
    breakers.storage,
  );
  const llamaparse = paceSubmissions(
    guard(
      createLlamaParseClient({
        apiKey: config.LLAMA_CLOUD_API_KEY,
        baseURL: config.LLAMA_CLOUD_BASE_URL,
        timeoutMs: config.LLAMAPARSE_TIMEOUT_MS,
        fetch: tracedFetch("llamaparse", llamaparseOperation),
      }),
      breakers.llamaparse,
    ),
    createGovernor(config, wiring, {
      provider: "llamaparse",
      apiKey: config.LLAMA_CLOUD_API_KEY,
      model: "parse",
      rpm: config.LLAMA_CLOUD_RPM,
      tpm: NO_TOKEN_LIMIT,
    }),
  );
  // Batch API calls are few per document (upload, create, a poll now and then, one download) and
  // have their own limits at OpenAI, so they skip the synchronous RPM/TPM governor; the breaker
  // still fails them fast while OpenAI is down.
  const batches = guard(
    createBatchEmbeddingsClient({
      apiKey: config.OPENAI_API_KEY,
      baseURL: config.OPENAI_BASE_URL,
      model: config.EMBED_MODEL,
      timeoutMs: config.OPENAI_TIMEOUT_MS,
    }),
    breakers.openai,
  );
  return {
    storage,
    llamaparse,
    embedder,
    batches,
    breakers,
    governor,
    settings: {
      webhookUrl: new URL("/webhooks/llamaparse", config.WEBHOOK_BASE_URL).toString(),
      webhookDeadlineMs: config.WEBHOOK_DEADLINE_SECONDS * 1000,
      takeoverWaitMs: config.LLAMAPARSE_TIMEOUT_MS,
      reconcilePollMs: Math.max(1000, Math.min(30_000, config.WEBHOOK_DEADLINE_SECONDS * 250)),
      parseDeadlineMs: config.PARSE_DEADLINE_SECONDS * 1000,
      partialParse: config.PARTIAL_PARSE,
      embedModel: config.EMBED_MODEL,
      embedDimensions: config.EMBED_DIMENSIONS,
      embedVersion: embedVersion(config),
      embedBatchSize: config.EMBED_BATCH_SIZE,
      embedMaxTokensPerRequest: OPENAI_MAX_TOKENS_PER_REQUEST,
      embedBulkViaBatchApi: config.EMBED_BULK_VIA_BATCH_API === "true",
      embedBatchPollMaxMs: config.EMBED_BATCH_POLL_MAX_SECONDS * 1000,
      chunkMaxTokens: config.CHUNK_MAX_TOKENS,
      chunkOverlapTokens: config.CHUNK_OVERLAP_TOKENS,
      chunkWriteBatch: 200,
      uploadMaxBytes: config.UPLOAD_MAX_BYTES,
    },
  };
}

/** `embed_version` of the configured model and dimensions. */
export function embedVersion(config: Pick<Config, "EMBED_MODEL" | "EMBED_DIMENSIONS">): string {
  return embedVersionOf(config.EMBED_MODEL, config.EMBED_DIMENSIONS);
}

function createGovernor(
  config: Config,
  wiring: ServiceWiring,
  budget: { provider: string; apiKey: string; model: string; rpm: number; tpm: number },
): Governor {
  const fallback = new LocalGovernor(new OpenAIRateLimiter({ requestsPerMinute: budget.rpm, tokensPerMinute: budget.tpm }));
  if (config.RATE_GOVERNOR === "local" || !wiring.db || !wiring.log) return fallback;
  return new SharedGovernor({
    db: wiring.db,
    budgetKey: budgetKey(budget.provider, budget.apiKey, budget.model),
    holder: wiring.holder ?? `pid:${process.pid}`,
    ceiling: { rpm: budget.rpm, tpm: budget.tpm },
    fallback,
    log: wiring.log,
  });
}

/**
 * Submissions to LlamaParse go through its governor (its API answers 429 too); reads are not
 * paced (a webhook-driven read per document, and the reconciler's rare poll).
 */
function paceSubmissions(client: LlamaParseClient, governor: Governor): LlamaParseClient {
  return {
    getParseJob: (...args) => client.getParseJob(...args),
    findParseJobs: (...args) => client.findParseJobs(...args),
    cancelParse: (...args) => client.cancelParse(...args),
    async submitParse(input, signal) {
      const grant = await governor.acquire({ requests: 1, tokens: 0 }, signal);
      try {
        const submitted = await client.submitParse(input, signal);
        await governor.settle(grant, {});
        return submitted;
      } catch (err) {
        const e = coerceError(err);
        await governor.fail(grant, { notSent: e.code === "circuit_open", rateLimited: e.status === 429 && e.transient, retryAfterMs: e.retryAfterMs });
        throw err;
      }
    },
  };
}

/** Every method of `client` runs through `breaker`: fail fast while the service is down. */
function guard<T extends LlamaParseClient | ObjectStorage | BatchEmbeddingsClient>(client: T, breaker: ServiceBreaker): T {
  return new Proxy(client, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => breaker.execute(() => value.apply(target, args));
    },
  });
}
