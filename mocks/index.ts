/**
 * The mocks of LlamaParse, OpenAI embeddings and Supabase Storage, as one set of msw handlers
 * sharing a fault plan, a seed and counters.
 *
 * In-process (tests): `setupServer(...createMocks().handlers)`.
 * Over HTTP (other processes): `startMockServer()` from `./server.ts`, or `npm run mocks`.
 *
 * @example
 * import { setupServer } from "msw/node";
 * const mocks = createMocks({ seed: 7, faults: { openai: { errors: [{ fault: 503, rate: 0.1 }] } } });
 * const server = setupServer(...mocks.handlers);
 * server.listen();
 */
import { randomUUID } from "node:crypto";
import type { HttpHandler } from "msw";
import { createAdminHandlers } from "./admin/handlers.ts";
import { LlamaParseState } from "./llamaparse/jobs.ts";
import { createLlamaParseHandlers } from "./llamaparse/handlers.ts";
import { WebhookSender, type DeliveryRecord, type WebhookSenderOptions } from "./llamaparse/webhook.ts";
import { BatchState, createBatchHandlers } from "./openai/batches.ts";
import { createOpenAIHandlers, openAILimitsFor } from "./openai/handlers.ts";
import { RateLimiter } from "./openai/rate-limits.ts";
import { FaultEngine, parseFaultPlan, type FaultLogEntry, type FaultPlan, type FaultPlanInput } from "./shared/faults.ts";
import type { MockContext } from "./shared/http.ts";
import { seededUuid } from "./shared/rng.ts";
import { MockStats, type MockStatsSnapshot } from "./shared/stats.ts";
import { DEFAULT_JWT_SECRET } from "./storage/jwt.ts";
import { createStorageHandlers } from "./storage/handlers.ts";
import { StorageState, type BucketLimits } from "./storage/state.ts";

export { expectedEmbedding, EMBEDDING_MODELS, LIMITS as EMBEDDING_LIMITS, tokenize, countInputTokens, toBase64Float32 } from "./openai/embeddings.ts";
export { parsedPages, joinPages, isTextual, POISON_MARKER } from "./llamaparse/markdown.ts";
export { signWebhook, type DeliveryRecord, type WebhookConfiguration, type WebhookEventType } from "./llamaparse/webhook.ts";
export { DEFAULT_JWT_SECRET, signServiceRoleKey } from "./storage/jwt.ts";
export {
  FaultPlanSchema,
  FaultPlanError,
  parseFaultPlan,
  faultLogLines,
  type FaultPlan,
  type FaultPlanInput,
  type FaultKind,
  type FaultLogEntry,
} from "./shared/faults.ts";
export type { MockStatsSnapshot, WebhookKind, WebhookOutcome, ModelUsage } from "./shared/stats.ts";
export { goDuration } from "./shared/duration.ts";

/** The bearer key the OpenAI mock accepts by default. */
export const DEFAULT_OPENAI_API_KEY = "sk-mock-openai-key";
/** The bearer key the LlamaParse mock accepts by default. */
export const DEFAULT_LLAMA_CLOUD_API_KEY = "llx-mock-llama-cloud-key";

/** Options of {@link createMocks} (and of `startMockServer`). */
export interface MockOptions {
  /** Seeds every draw (faults, latencies, job timings, ids). Default 1. */
  seed?: number;
  /** The fault plan to start with (validated; throws `FaultPlanError`). Default: none. */
  faults?: FaultPlanInput;
  /** See {@link WebhookSenderOptions.webhookBaseUrl}. */
  webhookBaseUrl?: string;
  /** Webhook retry delays and timeout; tests scale them down. */
  webhook?: Omit<WebhookSenderOptions, "webhookBaseUrl">;
  /** HS256 secret for Storage JWTs. Default: the Supabase CLI's local secret. */
  jwtSecret?: string;
  /** Bearer key the OpenAI mock accepts. Default {@link DEFAULT_OPENAI_API_KEY}. */
  openaiApiKey?: string;
  /** Bearer key the LlamaParse mock accepts. Default {@link DEFAULT_LLAMA_CLOUD_API_KEY}. */
  llamaCloudApiKey?: string;
  /** Buckets that exist from the start (and after a reset). Default `["documents"]`. */
  buckets?: string[];
  /**
   * Limits of those buckets, as a deployment sets them (`file_size_limit` = UPLOAD_MAX_BYTES,
   * `allowed_mime_types` = UPLOAD_ALLOWED_MIME). Default none, as Storage's default.
   */
  bucketLimits?: BucketLimits;
  /** The clock (ms). Default `Date.now`. */
  now?: () => number;
}

/** Everything the mocks keep, for tests and the scenario runner to inspect. */
export interface MockState {
  faults: FaultEngine;
  stats: MockStats;
  rateLimiter: RateLimiter;
  /** The OpenAI Files and Batches APIs' files and batches. */
  batches: BatchState;
  llamaparse: LlamaParseState;
  storage: StorageState;
  webhooks: WebhookSender;
}

/** A running set of mocks (no network of its own: serve `handlers` in-process or over HTTP). */
export interface Mocks {
  /** Every handler: OpenAI, LlamaParse, Storage and admin. */
  handlers: HttpHandler[];
  state: MockState;
  /** Keys the mocks accept. */
  keys: { openai: string; llamaCloud: string; jwtSecret: string };
  /** Replaces the fault plan (validated) and restarts its clock. */
  setFaults(plan: unknown): FaultPlan;
  stats(): MockStatsSnapshot;
  /** Every fault injected since the plan was set (requests and webhook deliveries). */
  faultLog(): readonly FaultLogEntry[];
  /** Forgets jobs, objects, files, batches, rate windows, counters and the webhook log; restarts the plan clock. */
  reset(): void;
  /** Resolves when no webhook delivery is pending. */
  webhooksIdle(): Promise<void>;
  /** Stops timers, cuts hangs and pending webhooks short. */
  close(): Promise<void>;
}

/**
 * Builds the mocks.
 * @throws {FaultPlanError} when `options.faults` is invalid
 */
export function createMocks(options: MockOptions = {}): Mocks {
  const now = options.now ?? Date.now;
  const seed = options.seed ?? 1;
  const closing = new AbortController();
  const faults = new FaultEngine(seed, parseFaultPlan(options.faults ?? {}), now);
  const stats = new MockStats(now);
  const ctx: MockContext = { faults, stats, now, closing: closing.signal, instance: randomUUID() };
  const keys = {
    openai: options.openaiApiKey ?? DEFAULT_OPENAI_API_KEY,
    llamaCloud: options.llamaCloudApiKey ?? DEFAULT_LLAMA_CLOUD_API_KEY,
    jwtSecret: options.jwtSecret ?? DEFAULT_JWT_SECRET,
  };

  const rateLimiter = new RateLimiter((model) => openAILimitsFor(faults.plan.openai, model), now);
  const webhooks = new WebhookSender(ctx, { ...options.webhook, webhookBaseUrl: options.webhookBaseUrl });
  const llamaparse = new LlamaParseState(ctx, webhooks, seededUuid(seed, "llamaparse-project"));
  const storage = new StorageState(seed, now, options.buckets ?? ["documents"], options.bucketLimits);
  const batches = new BatchState();
  const state: MockState = { faults, stats, rateLimiter, batches, llamaparse, storage, webhooks };

  const setFaults = (plan: unknown): FaultPlan => {
    const parsed = parseFaultPlan(plan);
    faults.setPlan(parsed);
    return parsed;
  };
  const snapshot = () => stats.snapshot(storage.totals());
  const reset = () => {
    rateLimiter.reset();
    batches.reset();
    llamaparse.reset();
    storage.reset();
    webhooks.reset();
    stats.reset();
    faults.restart();
  };

  const handlers: HttpHandler[] = [
    ...createAdminHandlers({
      getFaults: () => faults.plan,
      setFaults,
      stats: snapshot,
      webhookLog: (): readonly DeliveryRecord[] => webhooks.log,
      phases: () => faults.phases(),
      setPhase: (name, active) => faults.setPhase(name, active),
      reset,
    }),
    ...createOpenAIHandlers(ctx, { rateLimiter }, { apiKey: keys.openai }),
    ...createBatchHandlers(ctx, batches, { apiKey: keys.openai }),
    ...createLlamaParseHandlers(ctx, llamaparse, { apiKey: keys.llamaCloud }),
    ...createStorageHandlers(ctx, storage, { jwtSecret: keys.jwtSecret }),
  ];

  return {
    handlers,
    state,
    keys,
    setFaults,
    stats: snapshot,
    faultLog: () => faults.log,
    reset,
    webhooksIdle: () => webhooks.idle(),
    async close() {
      closing.abort();
      llamaparse.stopTimers();
      await webhooks.idle();
    },
  };
}
