/**
 * What the stages need from the outside world, passed in (never imported as globals), so the
 * same stages run against the real services, the mocks, or a test's stand-ins.
 */
import type { EmbedResult, EmbedTarget } from "../clients/openai.ts";
import type { BatchEmbeddingsClient } from "../clients/openaiBatch.ts";
import type { LlamaParseClient } from "../clients/llamaparse.ts";
import type { ObjectStorage } from "../clients/storage.ts";
import type { PartialParsePolicy } from "./parseIntake.ts";

export interface Embedder {
  readonly model: string;
  /** `options.target`: embed with this model and dimensions instead of the configured ones (a job's pinned settings). */
  embed(inputs: string[], signal?: AbortSignal, options?: { target?: EmbedTarget }): Promise<EmbedResult>;
}

export interface PipelineSettings {
  /** `${WEBHOOK_BASE_URL}/webhooks/llamaparse` */
  webhookUrl: string;
  /** How long a parse_queued job waits for its webhook before the reconciler polls. */
  webhookDeadlineMs: number;
  /**
   * How long after an expired (not released) lease a takeover of `uploaded` waits before it looks
   * for the previous holder's submission: the longest a LlamaParse call lasts (`LLAMAPARSE_TIMEOUT_MS`).
   */
  takeoverWaitMs: number;
  /** How often the reconciler polls again while LlamaParse is still working. */
  reconcilePollMs: number;
  /** PARSE_DEADLINE_SECONDS: a parse still unfinished this long after its submission fails the job. */
  parseDeadlineMs: number;
  /** PARTIAL_PARSE: what a parse with failed pages does to the job. */
  partialParse: PartialParsePolicy;
  embedModel: string;
  /** EMBED_DIMENSIONS; `undefined`: the model's default. */
  embedDimensions: number | undefined;
  /** Recorded as `embed_version`: changes whenever vectors for the same text could change. */
  embedVersion: string;
  /** Inputs per embeddings request (≤ 256). */
  embedBatchSize: number;
  /** Token cap per embeddings request (the API allows 300,000). */
  embedMaxTokensPerRequest: number;
  /** EMBED_BULK_VIA_BATCH_API: bulk jobs embed through the Batch API. */
  embedBulkViaBatchApi: boolean;
  /** EMBED_BATCH_POLL_MAX_SECONDS in ms: the longest snooze between two polls of a batch. */
  embedBatchPollMaxMs: number;
  chunkMaxTokens: number;
  chunkOverlapTokens: number;
  /** The largest raw file the submit stage sends to LlamaParse (`UPLOAD_MAX_BYTES`). */
  uploadMaxBytes: number;
  /** Chunks written per INSERT while chunking (memory stays bounded by this). */
  chunkWriteBatch: number;
}

export interface PipelineServices {
  storage: ObjectStorage;
  llamaparse: LlamaParseClient;
  embedder: Embedder;
  /** The OpenAI Batch API, for bulk jobs. */
  batches: BatchEmbeddingsClient;
  settings: PipelineSettings;
}

/** Where a document's parsed markdown lives in the bucket (SPEC §4). */
export function parsedPath(userId: string, documentId: string): string {
  return `${userId}/parsed/${documentId}.md`;
}
