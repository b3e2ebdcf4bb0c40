/**
 * LlamaParse v2 client (SPEC §4 uploaded → parse_queued, §6 webhook, §7 wire format).
 *
 * Built on the official `@llamaindex/llama-cloud` SDK, which covers everything we need:
 * `parsing.create({ upload_file, ...options })` sends `POST /api/v2/parse/upload` as multipart
 * with a `file` part and a `configuration` part holding every other option as one JSON string;
 * `parsing.get(id, { expand })` sends `GET /api/v2/parse/{id}?expand=markdown` (repeated
 * `expand`); `parsing.list` pages through `GET /api/v2/parse` with `created_at_on_or_after`,
 * `job_ids` and `status` filters. Answers are validated with zod anyway: the SDK types are
 * compile-time only, and a malformed body must not become an empty document.
 *
 * Retries: the SDK retries 5 times by default; it is built with `maxRetries: 0` because the
 * worker's resilience layer owns retries (one policy). For `submitParse` this matters doubly:
 * the v2 parse endpoints take no idempotency key, so every SDK retry of a timed-out upload
 * could start (and bill) another parse job.
 */
import LlamaCloud, { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from "@llamaindex/llama-cloud";
import { z } from "zod";
import { PermanentError, PipelineError, TransientError, classifyStatus } from "../errors.ts";
import { retryAfterMsFrom } from "./openai.ts";
import { redact } from "./redact.ts";

export interface LlamaParseClientOptions {
  apiKey: string;
  /** e.g. `https://api.cloud.llamaindex.ai` (US), `https://api.cloud.eu.llamaindex.ai` (EU), or the mock. */
  baseURL?: string | undefined;
  /** Parsing tier (`fast`, `cost_effective`, `agentic`, `agentic_plus`). Default `cost_effective`. */
  tier?: string | undefined;
  /** Tier version, `latest` or a dated one. Default `latest`. */
  version?: string | undefined;
  projectId?: string | undefined;
  organizationId?: string | undefined;
  /** Per-request timeout in ms (SDK default 60 s). */
  timeoutMs?: number | undefined;
  fetch?: typeof fetch | undefined;
}

export const PARSE_STATUSES = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"] as const;
export type ParseStatus = (typeof PARSE_STATUSES)[number];

/** The events the webhook handler acts on by default: the terminal ones. */
export const DEFAULT_WEBHOOK_EVENTS = ["parse.success", "parse.partial_success", "parse.error", "parse.cancelled"] as const;

export interface SubmitParseInput {
  file: Uint8Array | Blob;
  filename: string;
  mime: string;
  /** Where LlamaParse POSTs the §6 callback. */
  webhookUrl: string;
  /** Per-job secret; LlamaParse signs each delivery with it (`LC-Signature: sha256=<hex>`). */
  webhookSecret: string;
  /** Extra headers LlamaParse adds to each delivery (e.g. a routing hint). */
  webhookHeaders?: Record<string, string> | undefined;
  webhookEvents?: readonly string[] | undefined;
  /**
   * Key/value tags stored with the job and returned by `get`/`list` (LlamaParse's
   * `user_metadata`). Put the pipeline's job id here so `findParseJobs` can recover a
   * submission whose id was never recorded (see `findParseJobs`).
   */
  tags?: Record<string, string> | undefined;
}

export interface SubmittedParse {
  id: string;
  status: ParseStatus;
}

export interface ParsedPage {
  pageNumber: number;
  markdown: string;
}

export interface ParseJob {
  id: string;
  status: ParseStatus;
  errorMessage: string | null;
  /** Pages parsed successfully, in page order; empty unless `expand` included `markdown`. */
  pages: ParsedPage[];
  /** Pages LlamaParse could not parse (a `parse.partial_success` job has both). */
  failedPages: Array<{ pageNumber: number; error: string }>;
  /** Only with `expand: ["markdown_full"]`. */
  markdownFull: string | undefined;
}

export interface ParseJobSummary {
  id: string;
  status: ParseStatus;
  createdAt: string | null;
  tags: Record<string, string>;
}

export type ParseExpand = "markdown" | "markdown_full" | "text" | "metadata";

export interface LlamaParseClient {
  /** Upload the file and start a parse job; resolves once LlamaParse has accepted it (status PENDING). */
  submitParse(input: SubmitParseInput, signal?: AbortSignal): Promise<SubmittedParse>;
  /** Read a job; with `expand: ["markdown"]` also its per-page markdown. */
  getParseJob(id: string, options?: { expand?: readonly ParseExpand[] }, signal?: AbortSignal): Promise<ParseJob>;
  /**
   * Find jobs created at or after `createdAfter` whose tags include every entry of `tags`.
   *
   * This is how a crash between "LlamaParse accepted the upload" and "we recorded
   * `parse_job_id`" is recovered without a second billed job: the v2 API has no idempotency key
   * and `user_metadata` is not a server-side filter, so we page through the project's jobs
   * since the attempt began (a server-side date filter) and match the tags here. Record the
   * attempt's start time before submitting, tag the submission with the pipeline job id, and
   * on a retry look it up first. `maxJobs` bounds the scan.
   */
  findParseJobs(query: { createdAfter: Date; tags: Record<string, string>; maxJobs?: number }, signal?: AbortSignal): Promise<ParseJobSummary[]>;
  /** Cancel a job that has not finished (one already finished cannot be: `llamaparse_bad_request`). */
  cancelParse(id: string, signal?: AbortSignal): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Answer schemas (only what we read; unknown fields are ignored)

const Status = z.enum(PARSE_STATUSES);
const Tags = z
  .record(z.string(), z.string())
  .nullish()
  .transform((t) => t ?? {});

const CreateAnswer = z.object({ id: z.string().min(1), status: Status });

const GetAnswer = z.object({
  job: z.object({
    id: z.string().min(1),
    status: Status,
    error_message: z.string().nullish(),
  }),
  markdown: z
    .object({
      pages: z.array(
        z.union([
          z.object({ success: z.literal(true).optional(), page_number: z.number().int(), markdown: z.string() }),
          z.object({ success: z.literal(false), page_number: z.number().int(), error: z.string() }),
        ]),
      ),
    })
    .nullish(),
  markdown_full: z.string().nullish(),
});

const ListItem = z.object({ id: z.string().min(1), status: Status, created_at: z.string().nullish(), user_metadata: Tags });

/**
 * Create the LlamaParse client.
 *
 * @example
 * const parse = createLlamaParseClient({ apiKey, baseURL: "http://127.0.0.1:4020" });
 * const { id } = await parse.submitParse({ file, filename: "a.pdf", mime: "application/pdf", webhookUrl, webhookSecret, tags: { job_id } });
 * const job = await parse.getParseJob(id, { expand: ["markdown"] });
 */
export function createLlamaParseClient(options: LlamaParseClientOptions): LlamaParseClient {
  const { apiKey } = options;
  const sdk = new LlamaCloud({
    apiKey,
    maxRetries: 0, // see the file comment: one retry policy, and no duplicate billed jobs
    ...(options.baseURL ? { baseURL: options.baseURL } : {}),
    ...(options.timeoutMs !== undefined ? { timeout: options.timeoutMs } : {}),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  const scope = {
    ...(options.projectId ? { project_id: options.projectId } : {}),
    ...(options.organizationId ? { organization_id: options.organizationId } : {}),
  };
  const tier = options.tier ?? "cost_effective";
  const version = options.version ?? "latest";
  const fail = (err: unknown, what: string) => mapLlamaParseError(err, what, [apiKey]);

  return {
    async submitParse(input, signal) {
      const file = new File([input.file as BlobPart], input.filename, { type: input.mime });
      let answer: unknown;
      try {
        answer = await sdk.parsing.create(
          {
            ...scope,
            upload_file: file,
            tier,
            version,
            ...(input.tags && Object.keys(input.tags).length > 0 ? { user_metadata: input.tags } : {}),
            webhook_configurations: [
              {
                webhook_url: input.webhookUrl,
                webhook_headers: input.webhookHeaders ?? {},
                webhook_events: [...(input.webhookEvents ?? DEFAULT_WEBHOOK_EVENTS)],
                webhook_output_format: "json",
                webhook_signing_secret: input.webhookSecret,
              },
            ],
          },
          // `redirect: "error"`: to be able to follow a redirect, fetch (undici) sends a tee of
          // the request body and keeps the other branch, which is never read, so every byte of
          // the upload stayed in memory until LlamaParse answered (nodejs/undici#4058): against a
          // receiver reading ~4 MiB/s a 10 MiB upload held 10.3 MiB throughout, now 0.2-8.9 MiB
          // falling as it is sent. Without a redirect to follow there is no tee. A
          // billed upload is not re-sent to wherever a 3xx points anyway: that is a transient
          // failure, retried by the worker after looking the submission up.
          { signal, fetchOptions: { redirect: "error" } },
        );
      } catch (err) {
        throw fail(err, `submit ${input.filename}`);
      }
      const parsed = parseAnswer(CreateAnswer, answer, "submit");
      return { id: parsed.id, status: parsed.status };
    },

    async getParseJob(id, { expand = [] } = {}, signal) {
      let answer: unknown;
      try {
        answer = await sdk.parsing.get(id, { ...scope, ...(expand.length > 0 ? { expand: [...expand] } : {}) }, { signal });
      } catch (err) {
        throw fail(err, `get parse job ${id}`);
      }
      const parsed = parseAnswer(GetAnswer, answer, `get parse job ${id}`);
      const pages: ParsedPage[] = [];
      const failedPages: ParseJob["failedPages"] = [];
      for (const page of parsed.markdown?.pages ?? []) {
        if (page.success === false) failedPages.push({ pageNumber: page.page_number, error: page.error });
        else pages.push({ pageNumber: page.page_number, markdown: page.markdown });
      }
      pages.sort((a, b) => a.pageNumber - b.pageNumber);
      return {
        id: parsed.job.id,
        status: parsed.job.status,
        errorMessage: parsed.job.error_message ?? null,
        pages,
        failedPages,
        markdownFull: parsed.markdown_full ?? undefined,
      };
    },

    async cancelParse(id, signal) {
      try {
        await sdk.parsing.cancel(id, { ...scope }, { signal });
      } catch (err) {
        throw fail(err, `cancel parse job ${id}`);
      }
    },

    async findParseJobs({ createdAfter, tags, maxJobs = 1000 }, signal) {
      const found: ParseJobSummary[] = [];
      let seen = 0;
      try {
        const pages = sdk.parsing.list({ ...scope, created_at_on_or_after: createdAfter.toISOString(), page_size: 100 }, { signal });
        for await (const item of pages) {
          if (++seen > maxJobs) break;
          const job = parseAnswer(ListItem, item, "list parse jobs");
          if (Object.entries(tags).every(([k, v]) => job.user_metadata[k] === v)) {
            found.push({ id: job.id, status: job.status, createdAt: job.created_at ?? null, tags: job.user_metadata });
          }
        }
      } catch (err) {
        const e = fail(err, "list parse jobs");
        // A 404 here is not "no such job": the list endpoint itself is missing (an older
        // deployment or a mock without it). Say so, so the caller can choose to submit anyway.
        if (e.code === "llamaparse_not_found") {
          throw new PermanentError("llamaparse_lookup_unavailable", `LlamaParse cannot list parse jobs here (GET /api/v2/parse answered 404): ${e.message}`, {
            cause: e,
            status: 404,
          });
        }
        throw e;
      }
      return found;
    },
  };
}

function parseAnswer<S extends z.ZodType>(schema: S, answer: unknown, what: string): z.output<S> {
  const result = schema.safeParse(answer);
  if (result.success) return result.data;
  // Transient: a truncated or garbled answer (proxy, fault plan) may be whole next time.
  throw new TransientError("llamaparse_bad_response", `LlamaParse ${what}: unexpected answer: ${z.prettifyError(result.error).slice(0, 500)}`);
}

/**
 * Map an SDK failure to a `PipelineError`. LlamaParse bodies are `{"detail": "..."}`, or
 * `{"detail": [{loc, msg, type}]}` for a 422.
 *
 * | upstream | code | class |
 * |---|---|---|
 * | 401 / 403 | `llamaparse_unauthorized` | permanent |
 * | 402 (no credits) | `llamaparse_payment_required` | permanent |
 * | 404 (unknown job) | `llamaparse_not_found` | permanent |
 * | 400 / 422 / other 4xx | `llamaparse_bad_request` | permanent |
 * | 429 | `llamaparse_rate_limited` (`retryAfterMs` if a header says) | transient |
 * | 408 / 409 / 5xx | `llamaparse_unavailable` | transient |
 * | timeout / abort / connection | `timeout` / `aborted` / `llamaparse_connection` | transient |
 */
export function mapLlamaParseError(err: unknown, what: string, secrets: string[] = []): PipelineError {
  if (err instanceof PipelineError) return err;
  const clean = (m: string) => redact(m, secrets);
  if (err instanceof APIUserAbortError) return new TransientError("aborted", `LlamaParse ${what}: aborted by the caller`, { cause: err });
  if (err instanceof APIConnectionTimeoutError) return new TransientError("timeout", `LlamaParse ${what}: timed out`, { cause: err });
  if (err instanceof APIConnectionError) {
    const cause = err.cause instanceof Error ? `: ${err.cause.message}` : "";
    return new TransientError("llamaparse_connection", clean(`LlamaParse ${what}: connection failed${cause}`), { cause: err });
  }
  if (err instanceof APIError && typeof err.status === "number") {
    const status = err.status;
    const message = clean(`LlamaParse ${what}: HTTP ${status}: ${describeDetail(err.error) ?? err.message}`);
    const opts = { cause: err, status };
    if (status === 429) {
      const retryAfterMs = retryAfterMsFrom(err.headers, undefined);
      return new TransientError("llamaparse_rate_limited", message, { ...opts, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) });
    }
    if (status === 401 || status === 403) return new PermanentError("llamaparse_unauthorized", message, opts);
    if (status === 402) return new PermanentError("llamaparse_payment_required", message, opts);
    if (status === 404) return new PermanentError("llamaparse_not_found", message, opts);
    if (classifyStatus(status) === "transient") return new TransientError("llamaparse_unavailable", message, opts);
    return new PermanentError("llamaparse_bad_request", message, opts);
  }
  if (err instanceof SyntaxError) return new TransientError("llamaparse_bad_response", `LlamaParse ${what}: answer is not JSON`, { cause: err });
  const e = err instanceof Error ? err : new Error(String(err));
  if (e.name === "AbortError") return new TransientError("aborted", `LlamaParse ${what}: aborted by the caller`, { cause: e });
  return new TransientError("llamaparse_unexpected", clean(`LlamaParse ${what}: ${e.message}`), { cause: e });
}

/** `"Job not found"`, or for a 422 `"configuration.tier: Input should be …"`. */
function describeDetail(body: unknown): string | undefined {
  const detail = (body as { detail?: unknown } | undefined)?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d: { loc?: unknown; msg?: unknown }) => {
        const loc = Array.isArray(d?.loc) ? d.loc.join(".") : undefined;
        return `${loc ? `${loc}: ` : ""}${typeof d?.msg === "string" ? d.msg : JSON.stringify(d)}`;
      })
      .join("; ");
  }
  return undefined;
}
