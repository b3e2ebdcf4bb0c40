/**
 * OpenAI Batch API client for embeddings (issue 14): upload a JSONL of `/v1/embeddings`
 * requests (`files.create`, purpose `batch`), create a batch over it (`batches.create`, 24 h
 * window, `metadata`), read its state (`batches.retrieve`), and read its output and error files
 * line by line (`files.content`, streamed: a document's output never sits in memory whole).
 *
 * Lookups after a crash: `findUpload` finds an input file by its name and `findBatch` a batch by
 * a metadata value, scanning the newest-first lists only back to a given time, so a worker that
 * died after the call but before recording its answer never creates a second file or batch.
 *
 * Built like the embeddings client: the official SDK with `maxRetries: 0` (the worker owns
 * retries) and every failure mapped by `mapOpenAIError` (stable codes, key redacted).
 */
import OpenAI from "openai";
import { toFile } from "openai/uploads";
import { z } from "zod";
import { TransientError } from "../errors.ts";
import { mapOpenAIError, type EmbeddingsClientOptions } from "./openai.ts";

/** What the lane needs to know of a batch. */
export interface BatchHandle {
  id: string;
  status: "validating" | "failed" | "in_progress" | "finalizing" | "completed" | "expired" | "cancelling" | "cancelled";
  outputFileId: string | null;
  errorFileId: string | null;
  requestCounts: { total: number; completed: number; failed: number };
}

/** Terminal statuses: the batch will not change any more. */
export const FINISHED_BATCH_STATUSES = ["completed", "failed", "expired", "cancelled"] as const;
export type FinishedBatchStatus = (typeof FINISHED_BATCH_STATUSES)[number];

export function isFinished(status: BatchHandle["status"]): status is FinishedBatchStatus {
  return (FINISHED_BATCH_STATUSES as readonly string[]).includes(status);
}

/**
 * One line of an output or error file. `embedding` is set for a 200 answer with one vector
 * (one input per request line); `failure` names why a line produced none.
 */
export interface BatchResultLine {
  customId: string;
  embedding: Float32Array | undefined;
  promptTokens: number;
  failure: string | undefined;
}

export interface BatchEmbeddingsClient {
  /** Upload the JSONL requests as `filename` (purpose `batch`); returns the file id. */
  uploadRequests(jsonl: string, filename: string, signal?: AbortSignal): Promise<string>;
  /** The id of a `batch` file named `filename` uploaded at or after `since`, if any. */
  findUpload(filename: string, since: Date, signal?: AbortSignal): Promise<string | undefined>;
  /** Create a batch for `/v1/embeddings` with a 24 h window over `inputFileId`. */
  createBatch(inputFileId: string, metadata: Record<string, string>, signal?: AbortSignal): Promise<BatchHandle>;
  /** The batch created at or after `since` whose `metadata[key]` is `value`, if any. */
  findBatch(key: string, value: string, since: Date, signal?: AbortSignal): Promise<BatchHandle | undefined>;
  retrieveBatch(batchId: string, signal?: AbortSignal): Promise<BatchHandle>;
  /** The lines of an output or error file, parsed, in file order. */
  readResults(fileId: string, signal?: AbortSignal): Promise<AsyncIterable<BatchResultLine>>;
}

/** How far back a lookup looks before `since` (clock skew between us and OpenAI). */
const LOOKUP_SLACK_SECONDS = 600;
const PAGE = 100;

const ResultLineSchema = z.object({
  custom_id: z.string(),
  response: z
    .object({
      status_code: z.number(),
      body: z
        .object({
          data: z.array(z.object({ embedding: z.array(z.number()) })).optional(),
          usage: z.object({ prompt_tokens: z.number() }).optional(),
          error: z.object({ message: z.string().optional(), code: z.string().nullish(), type: z.string().nullish() }).optional(),
        })
        .passthrough(),
    })
    .nullish(),
  error: z.object({ code: z.string().nullish(), message: z.string().nullish() }).nullish(),
});

function toHandle(b: OpenAI.Batches.Batch): BatchHandle {
  return {
    id: b.id,
    status: b.status,
    outputFileId: b.output_file_id ?? null,
    errorFileId: b.error_file_id ?? null,
    requestCounts: { total: b.request_counts?.total ?? 0, completed: b.request_counts?.completed ?? 0, failed: b.request_counts?.failed ?? 0 },
  };
}

/** Parse one output/error line; a line that is not what the API writes is a transient `openai_bad_response`. */
export function parseResultLine(text: string): BatchResultLine {
  let parsed: z.infer<typeof ResultLineSchema>;
  try {
    parsed = ResultLineSchema.parse(JSON.parse(text));
  } catch (err) {
    throw new TransientError("openai_bad_response", `OpenAI batch result line is malformed: ${(err as Error).message.slice(0, 200)}`);
  }
  const r = parsed.response;
  const vectors = r?.status_code === 200 ? (r.body.data ?? []) : [];
  if (r?.status_code === 200 && vectors.length === 1) {
    const embedding = Float32Array.from(vectors[0]!.embedding);
    if (embedding.length === 0 || !embedding.every(Number.isFinite)) {
      return { customId: parsed.custom_id, embedding: undefined, promptTokens: 0, failure: "malformed embedding" };
    }
    return { customId: parsed.custom_id, embedding, promptTokens: r.body.usage?.prompt_tokens ?? 0, failure: undefined };
  }
  const why = parsed.error?.code ?? (r ? `HTTP ${r.status_code}${r.body.error?.type ? ` ${r.body.error.type}` : ""}` : "no response");
  return { customId: parsed.custom_id, embedding: undefined, promptTokens: 0, failure: why };
}

/** Split a byte stream into text lines without holding more than one line (and one read) at a time. */
async function* lines(body: ReadableStream<Uint8Array>): AsyncIterable<string> {
  const decoder = new TextDecoder();
  let rest = "";
  for await (const chunk of body) {
    rest += decoder.decode(chunk, { stream: true });
    let nl = rest.indexOf("\n");
    while (nl !== -1) {
      yield rest.slice(0, nl);
      rest = rest.slice(nl + 1);
      nl = rest.indexOf("\n");
    }
  }
  rest += decoder.decode();
  if (rest.length > 0) yield rest;
}

/**
 * Create the Batch API client.
 *
 * @example
 * const batches = createBatchEmbeddingsClient({ apiKey, baseURL: "http://127.0.0.1:4010/v1", model: "text-embedding-3-small" });
 * const fileId = await batches.uploadRequests(jsonl, "3f2a….jsonl");
 * const batch = await batches.createBatch(fileId, { intent_key: "3f2a…" });
 */
export function createBatchEmbeddingsClient(options: EmbeddingsClientOptions): BatchEmbeddingsClient {
  const { apiKey } = options;
  const sdk = new OpenAI({
    apiKey,
    baseURL: options.baseURL,
    maxRetries: 0,
    ...(options.timeoutMs !== undefined ? { timeout: options.timeoutMs } : {}),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  const call = async <T>(fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      throw mapOpenAIError(err, apiKey);
    }
  };
  const notBefore = (since: Date) => Math.floor(since.getTime() / 1000) - LOOKUP_SLACK_SECONDS;

  return {
    uploadRequests: (jsonl, filename, signal) =>
      call(async () => (await sdk.files.create({ file: await toFile(Buffer.from(jsonl), filename), purpose: "batch" }, { signal })).id),

    findUpload: (filename, since, signal) =>
      call(async () => {
        for await (const f of sdk.files.list({ purpose: "batch", order: "desc", limit: PAGE }, { signal })) {
          if (f.created_at < notBefore(since)) return undefined;
          if (f.filename === filename) return f.id;
        }
        return undefined;
      }),

    createBatch: (inputFileId, metadata, signal) =>
      call(async () =>
        toHandle(await sdk.batches.create({ input_file_id: inputFileId, endpoint: "/v1/embeddings", completion_window: "24h", metadata }, { signal })),
      ),

    findBatch: (key, value, since, signal) =>
      call(async () => {
        for await (const b of sdk.batches.list({ limit: PAGE }, { signal })) {
          if (b.created_at < notBefore(since)) return undefined;
          if (b.metadata?.[key] === value) return toHandle(b);
        }
        return undefined;
      }),

    retrieveBatch: (batchId, signal) => call(async () => toHandle(await sdk.batches.retrieve(batchId, { signal }))),

    readResults: (fileId, signal) =>
      call(async () => {
        const response = await sdk.files.content(fileId, { signal });
        if (!response.body) throw new TransientError("openai_bad_response", `OpenAI returned no body for file ${fileId}`);
        const body = response.body;
        return (async function* () {
          try {
            for await (const line of lines(body)) if (line.trim() !== "") yield parseResultLine(line);
          } catch (err) {
            throw mapOpenAIError(err, apiKey);
          }
        })();
      }),
  };
}
