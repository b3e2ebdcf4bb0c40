/**
 * OpenAI's Files and Batches APIs, as the official SDK calls them: `files.create` (multipart,
 * purpose `batch`), `files.retrieve`, `files.list`, `files.content`, and `batches.create`
 * (endpoint `/v1/embeddings`, window `24h`, `metadata`), `batches.retrieve`, `batches.list`,
 * `batches.cancel`.
 *
 * A batch moves `validating → in_progress → finalizing → completed` on the plan's schedule,
 * or ends `failed` (an invalid input file, or the `failed` fate), `expired` or `cancelled`. Its state is computed
 * from the clock when it is read, so no timer runs. When it finishes, each request line is
 * answered exactly as the synchronous `/v1/embeddings` answers it (same checks, same vectors,
 * same usage): successes go to the output file, failures to the error file.
 *
 * A batch's fate (expired, partly failed, slow, failed outright, or an output file with a
 * foreign, a repeated or a cut line) is drawn once, keyed by the seed, its input
 * file's SHA-256 and how many batches that content already had; which lines of a partly
 * failed batch fail is keyed by their `custom_id`. So a seed replays the same fates whatever
 * the ids, times or arrival order.
 */
import { http } from "msw";
import type { OpenAIBatchFaults } from "../shared/faults.ts";
import { faulted, json, type MockContext } from "../shared/http.ts";
import { rngFor, seededUuid, sha256Hex } from "../shared/rng.ts";
import { checkBearer, embeddingsAnswer, errorBody, invalid, readJsonObject, validateEmbeddingsBody } from "./handlers.ts";

/** Route ids of the Files and Batches endpoints in stats and fault plans. */
export const BATCH_ROUTES = {
  fileCreate: "openai.files.create",
  fileGet: "openai.files.retrieve",
  fileList: "openai.files.list",
  fileContent: "openai.files.content",
  batchCreate: "openai.batches.create",
  batchGet: "openai.batches.retrieve",
  batchList: "openai.batches.list",
  batchCancel: "openai.batches.cancel",
} as const;

/** The only endpoint the mock batches (the one this pipeline uses). */
const BATCH_ENDPOINT = "/v1/embeddings";
const FILE_PURPOSES = ["batch", "batch_output", "assistants", "fine-tune", "vision", "user_data", "evals"] as const;

/** A stored file (an upload, or a batch's output or error file). */
export interface StoredFile {
  id: string;
  bytes: Uint8Array;
  filename: string;
  purpose: string;
  createdAt: number;
  sha256: string;
}

type TerminalStatus = "completed" | "failed" | "expired" | "cancelled";
type BatchStatus = "validating" | "in_progress" | "finalizing" | TerminalStatus;

interface Fate {
  expire: { completedFraction: number } | undefined;
  partialFailure: { requests: number } | undefined;
  slowMs: number;
  failed: boolean;
  foreignLine: boolean;
  duplicateLine: boolean;
  /** The width of the one cut embedding, when the output file has one. */
  wrongDimensions: number | undefined;
}

/** One batch: what was asked, its drawn fate, and (once finished) its result. */
export interface StoredBatch {
  id: string;
  createdAt: number;
  inputFileId: string;
  metadata: Record<string, string> | null;
  /** `{sha256 of the input}:{occurrence}`: seeds the fate and the per-line draws. */
  key: string;
  fate: Fate;
  schedule: OpenAIBatchFaults["schedule"];
  /** Validation errors of the input file, or a `failed` fate's error: the batch ends `failed` after `validating`. */
  errors: Array<{ code: string; message: string; line: number | null; param: string | null }>;
  cancelledAt: number | undefined;
  result:
    | { status: TerminalStatus; at: number; outputFileId: string | null; errorFileId: string | null; total: number; completed: number; failed: number }
    | undefined;
}

/** What the Files and Batches mock keeps. */
export class BatchState {
  readonly files = new Map<string, StoredFile>();
  readonly batches = new Map<string, StoredBatch>();
  #occurrences = new Map<string, number>();
  #counter = 0;

  reset(): void {
    this.files.clear();
    this.batches.clear();
    this.#occurrences.clear();
    this.#counter = 0;
  }

  nextId(ctx: MockContext, prefix: string): string {
    return `${prefix}-${seededUuid(ctx.faults.seed, prefix, ctx.instance, ++this.#counter).replaceAll("-", "")}`;
  }

  addFile(ctx: MockContext, file: Omit<StoredFile, "id" | "createdAt" | "sha256">): StoredFile {
    const stored: StoredFile = { ...file, id: this.nextId(ctx, "file"), createdAt: ctx.now(), sha256: sha256Hex(file.bytes) };
    this.files.set(stored.id, stored);
    return stored;
  }

  /** The content key of a new batch over `input`: its hash and how many batches it already had. */
  contentKey(input: StoredFile): string {
    const occurrence = (this.#occurrences.get(input.sha256) ?? 0) + 1;
    this.#occurrences.set(input.sha256, occurrence);
    return `${input.sha256}:${occurrence}`;
  }
}

const seconds = (ms: number) => Math.floor(ms / 1000);

function fileObject(f: StoredFile) {
  return {
    id: f.id,
    object: "file",
    bytes: f.bytes.byteLength,
    created_at: seconds(f.createdAt),
    expires_at: null,
    filename: f.filename,
    purpose: f.purpose,
    status: "processed",
    status_details: null,
  };
}

/** Draws a batch's fate from the plan: one draw per rule, always, so the stream stays aligned. */
function drawFate(ctx: MockContext, key: string): Fate {
  const plan = ctx.faults.plan.openai?.batches;
  const rng = rngFor(ctx.faults.seed, "openai.batch", key);
  const expire = rng() < (plan?.expire?.rate ?? 0) ? { completedFraction: plan!.expire!.completedFraction } : undefined;
  const partial = rng() < (plan?.partialFailure?.rate ?? 0) ? { requests: plan!.partialFailure!.requests } : undefined;
  const slowMs = rng() < (plan?.slow?.rate ?? 0) ? plan!.slow!.extraMs : 0;
  const failed = rng() < (plan?.failed?.rate ?? 0);
  const foreignLine = rng() < (plan?.foreignLine?.rate ?? 0);
  const duplicateLine = rng() < (plan?.duplicateLine?.rate ?? 0);
  const wrongDimensions = rng() < (plan?.wrongDimensions?.rate ?? 0) ? plan!.wrongDimensions!.dimensions : undefined;
  return { expire, partialFailure: expire ? undefined : partial, slowMs, failed, foreignLine, duplicateLine, wrongDimensions };
}

/** The error of a batch OpenAI fails outright for the organization's enqueued-token limit (the API's wording). */
function enqueuedTokenLimit(lines: RequestLine[]): StoredBatch["errors"][number] {
  const model = String(lines[0]?.body.model ?? "the model");
  return {
    code: "token_limit_exceeded",
    message: `Enqueued token limit reached for ${model} in organization org-mock. Limit: 3,000,000 enqueued tokens. Please try again once some in_progress batches have been completed.`,
    line: null,
    param: null,
  };
}

/**
 * A request this batch never had, for a `foreignLine`: the first request of the newest other
 * batch the mock holds that is not in this input, else this batch's first request under a
 * fresh `custom_id`.
 */
function foreignRequest(ctx: MockContext, state: BatchState, batch: StoredBatch, lines: RequestLine[]): RequestLine | undefined {
  const ours = new Set(lines.map((l) => l.custom_id));
  for (const other of [...state.batches.values()].reverse()) {
    if (other === batch) continue;
    const theirs = readInputFile(state.files.get(other.inputFileId)!).lines.find((l) => !ours.has(l.custom_id));
    if (theirs) return theirs;
  }
  return lines[0] && { custom_id: seededUuid(ctx.faults.seed, "openai.batch.foreign", batch.key), body: lines[0].body };
}

/** Cuts every embedding of an output line to its first `dimensions` values (float arrays or base64 float32). */
function cutEmbeddings(text: string, dimensions: number): string {
  const line = JSON.parse(text) as { response: { body: { data: Array<{ embedding: number[] | string }> } } };
  for (const d of line.response.body.data) {
    d.embedding =
      typeof d.embedding === "string"
        ? Buffer.from(d.embedding, "base64")
            .subarray(0, dimensions * 4)
            .toString("base64")
        : d.embedding.slice(0, dimensions);
  }
  return JSON.stringify(line);
}

interface RequestLine {
  custom_id: string;
  body: Record<string, unknown>;
}

/** Checks the input file as the API's `validating` step does: JSONL, unique `custom_id`s, POST to the batch's endpoint. */
function readInputFile(file: StoredFile): { lines: RequestLine[]; errors: StoredBatch["errors"] } {
  const errors: StoredBatch["errors"] = [];
  const lines: RequestLine[] = [];
  const seen = new Set<string>();
  const text = Buffer.from(file.bytes).toString("utf8");
  text.split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    const line = i + 1;
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      errors.push({ code: "invalid_json_line", message: `This line is not parseable as valid JSON.`, line, param: null });
      return;
    }
    const l = parsed as { custom_id?: unknown; method?: unknown; url?: unknown; body?: unknown };
    if (typeof l.custom_id !== "string" || l.custom_id === "") {
      errors.push({ code: "missing_required_parameter", message: "Missing required parameter: 'custom_id'.", line, param: "custom_id" });
    } else if (seen.has(l.custom_id)) {
      errors.push({ code: "duplicate_custom_id", message: `The custom_id for this request is a duplicate of another request.`, line, param: "custom_id" });
    } else if (l.method !== "POST") {
      errors.push({ code: "invalid_value", message: "Invalid value for 'method': expected 'POST'.", line, param: "method" });
    } else if (l.url !== BATCH_ENDPOINT) {
      errors.push({
        code: "mismatched_endpoint",
        message: `The URL provided for this request does not match the batch endpoint ${BATCH_ENDPOINT}.`,
        line,
        param: "url",
      });
    } else if (typeof l.body !== "object" || l.body === null || Array.isArray(l.body)) {
      errors.push({ code: "missing_required_parameter", message: "Missing required parameter: 'body'.", line, param: "body" });
    } else {
      seen.add(l.custom_id);
      lines.push({ custom_id: l.custom_id, body: l.body as Record<string, unknown> });
    }
  });
  if (lines.length === 0 && errors.length === 0) errors.push({ code: "empty_file", message: "The input file is empty.", line: null, param: null });
  return { lines, errors };
}

/** The status a batch shows at `now`, finishing it (writing its files) the first time it is seen finished. */
async function settle(ctx: MockContext, state: BatchState, batch: StoredBatch): Promise<BatchStatus> {
  if (batch.result) return batch.result.status;
  const now = ctx.now();
  const { validatingMs, inProgressMs, finalizingMs } = batch.schedule;
  if (batch.cancelledAt !== undefined) return finish(ctx, state, batch, "cancelled", batch.cancelledAt);
  const validatedAt = batch.createdAt + validatingMs;
  if (now < validatedAt) return "validating";
  if (batch.errors.length > 0) return finish(ctx, state, batch, "failed", validatedAt);
  const processedAt = validatedAt + inProgressMs + batch.fate.slowMs;
  if (now < processedAt) return "in_progress";
  if (batch.fate.expire) return finish(ctx, state, batch, "expired", processedAt);
  if (now < processedAt + finalizingMs) return "finalizing";
  return finish(ctx, state, batch, "completed", processedAt + finalizingMs);
}

/**
 * Answers every request line (or marks it expired / cancelled / failed by the fate) and writes
 * the output and error files. Runs once per batch: reads are synchronous from here on.
 */
async function finish(ctx: MockContext, state: BatchState, batch: StoredBatch, status: TerminalStatus, at: number): Promise<TerminalStatus> {
  const input = state.files.get(batch.inputFileId)!;
  const { lines } = status === "failed" ? { lines: [] } : readInputFile(input);
  const seed = ctx.faults.seed;
  const partial = batch.fate.partialFailure;
  const failing = new Set<string>();
  if (partial && lines.length > 0) {
    for (const l of lines) if (rngFor(seed, "openai.batch.line", batch.key, l.custom_id)() < partial.requests) failing.add(l.custom_id);
    if (failing.size === 0) failing.add(lines[0]!.custom_id); // a partly failed batch fails at least one request
  }
  const out: string[] = [];
  const err: string[] = [];
  const requestId = (customId: string) => `req_${sha256Hex(`${batch.key}:${customId}`).slice(0, 24)}`;
  const lineId = (customId: string) => `batch_req_${sha256Hex(`${batch.id}:${customId}`).slice(0, 24)}`;
  /** Answers a request line as `POST /v1/embeddings` does, into the output or the error file; `bill` counts its usage. */
  const answer = async (l: RequestLine, bill: boolean) => {
    const base = { id: lineId(l.custom_id), custom_id: l.custom_id };
    const valid = validateEmbeddingsBody(l.body);
    if (valid instanceof Response) {
      err.push(JSON.stringify({ ...base, response: { status_code: valid.status, request_id: requestId(l.custom_id), body: await valid.json() }, error: null }));
      return;
    }
    if (bill) ctx.stats.recordUsage(valid.model, valid.inputs.length, valid.total, true);
    out.push(JSON.stringify({ ...base, response: { status_code: 200, request_id: requestId(l.custom_id), body: embeddingsAnswer(valid) }, error: null }));
  };
  for (const l of lines) {
    const base = { id: lineId(l.custom_id), custom_id: l.custom_id };
    const expired = status === "expired" && rngFor(seed, "openai.batch.expire", batch.key, l.custom_id)() >= batch.fate.expire!.completedFraction;
    if (status === "cancelled" || expired) {
      const code = expired ? "batch_expired" : "batch_cancelled";
      const message = expired ? "This request could not be executed before the completion window expired." : "This request was cancelled.";
      err.push(JSON.stringify({ ...base, response: null, error: { code, message } }));
      continue;
    }
    if (failing.has(l.custom_id)) {
      const body = {
        error: { message: "The server had an error while processing your request. Sorry about that!", type: "server_error", param: null, code: null },
      };
      err.push(JSON.stringify({ ...base, response: { status_code: 500, request_id: requestId(l.custom_id), body }, error: null }));
      continue;
    }
    await answer(l, true);
  }
  // request_counts count this batch's requests, whatever the output-file faults below add.
  const counts = { total: lines.length, completed: out.length, failed: err.length };
  if (out.length > 0) {
    const { wrongDimensions, duplicateLine, foreignLine } = batch.fate;
    const pick = (fault: string) => Math.floor(rngFor(seed, "openai.batch.output", batch.key, fault)() * out.length);
    if (wrongDimensions !== undefined) {
      const i = pick("wrongDimensions");
      out[i] = cutEmbeddings(out[i]!, wrongDimensions);
    }
    if (duplicateLine) {
      const i = pick("duplicateLine");
      out.splice(i + 1, 0, out[i]!);
    }
    const foreign = foreignLine ? foreignRequest(ctx, state, batch, lines) : undefined;
    if (foreign) await answer(foreign, false); // not this batch's request: not billed to it
  }
  // Two readers may both see the batch finish: the first to get here writes the result.
  if (batch.result) return batch.result.status;
  const write = (rows: string[], kind: string) =>
    rows.length === 0
      ? null
      : state.addFile(ctx, { bytes: Buffer.from(`${rows.join("\n")}\n`), filename: `${batch.id}_${kind}.jsonl`, purpose: "batch_output" }).id;
  batch.result = {
    status,
    at,
    outputFileId: write(out, "output"),
    errorFileId: write(err, "error"),
    ...counts,
  };
  ctx.stats.batches.finished[status] = (ctx.stats.batches.finished[status] ?? 0) + 1;
  return status;
}

async function batchObject(ctx: MockContext, state: BatchState, b: StoredBatch) {
  const status = await settle(ctx, state, b);
  const r = b.result;
  const { validatingMs, inProgressMs } = b.schedule;
  const started = b.createdAt + validatingMs;
  const at = (cond: boolean, ms: number) => (cond ? seconds(ms) : null);
  return {
    id: b.id,
    object: "batch",
    endpoint: BATCH_ENDPOINT,
    errors: b.errors.length > 0 ? { object: "list", data: b.errors } : null,
    input_file_id: b.inputFileId,
    completion_window: "24h",
    status,
    output_file_id: r?.outputFileId ?? null,
    error_file_id: r?.errorFileId ?? null,
    created_at: seconds(b.createdAt),
    in_progress_at: at(status !== "validating" && status !== "failed" && !(status === "cancelled" && (b.cancelledAt ?? 0) < started), started),
    expires_at: seconds(b.createdAt + 24 * 3_600_000),
    finalizing_at: at(status === "finalizing" || status === "completed", started + inProgressMs + b.fate.slowMs),
    completed_at: at(status === "completed", r?.at ?? 0),
    failed_at: at(status === "failed", r?.at ?? 0),
    expired_at: at(status === "expired", r?.at ?? 0),
    cancelling_at: at(status === "cancelled", b.cancelledAt ?? 0),
    cancelled_at: at(status === "cancelled", r?.at ?? 0),
    request_counts: { total: r?.total ?? 0, completed: r?.completed ?? 0, failed: r?.failed ?? 0 },
    metadata: b.metadata,
  };
}

/** A page of a list, newest first, after the cursor `after` (an id), as the API pages. */
function page<T extends { id: string }>(
  items: T[],
  url: URL,
): { object: "list"; data: T[]; has_more: boolean; first_id: string | null; last_id: string | null } | Response {
  const limitText = url.searchParams.get("limit");
  const limit = limitText === null ? 20 : Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000)
    return invalid(`Invalid 'limit': expected an integer between 1 and 10000.`, "limit", "invalid_value");
  const after = url.searchParams.get("after");
  let start = 0;
  if (after !== null) {
    const i = items.findIndex((x) => x.id === after);
    start = i === -1 ? items.length : i + 1;
  }
  const data = items.slice(start, start + limit);
  return { object: "list", data, has_more: start + limit < items.length, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null };
}

const notFound = (what: string, id: string) =>
  errorBody({ message: `No ${what} found with id '${id}'.`, type: "invalid_request_error", param: null, code: null }, 404);

/** Fingerprint of an upload: the uploaded file's bytes (never the multipart boundary). */
async function uploadFingerprint(request: Request): Promise<string> {
  try {
    const form = await request.formData();
    const file = form.get("file");
    return file instanceof Blob ? `${String(form.get("purpose"))}:${sha256Hex(new Uint8Array(await file.arrayBuffer())).slice(0, 16)}` : "no-file";
  } catch {
    return "not-multipart";
  }
}

/** Builds the Files and Batches handlers over `state`. */
export function createBatchHandlers(ctx: MockContext, state: BatchState, options: { apiKey: string }) {
  const plain = (route: string, fingerprint?: (request: Request, params: Record<string, unknown>) => string | Promise<string>) => ({
    ctx,
    service: "openai" as const,
    route,
    fingerprint,
    errorResponse: (fault: number | "insufficient_quota") =>
      fault === "insufficient_quota"
        ? errorBody({ message: "You exceeded your current quota.", type: "insufficient_quota", param: null, code: "insufficient_quota" }, 429)
        : errorBody({ message: "The server had an error while processing your request.", type: "server_error", param: null, code: null }, fault),
  });
  /** Reads and writes of a batch or its files are keyed by the batch's content key, never by its id. */
  const batchKeyOf = (_request: Request, params: Record<string, unknown>) => state.batches.get(String(params.id))?.key ?? `unknown:${String(params.id)}`;
  const fileKeyOf = (_request: Request, params: Record<string, unknown>) =>
    state.files.get(String(params.id))?.sha256.slice(0, 16) ?? `unknown:${String(params.id)}`;
  const authed =
    (resolver: (info: { request: Request; params: Record<string, unknown> }) => Response | Promise<Response>) =>
    (info: { request: Request; params: Record<string, unknown> }) =>
      checkBearer(info.request, options.apiKey) ?? resolver(info);

  const createFile = faulted(
    plain(BATCH_ROUTES.fileCreate, uploadFingerprint),
    authed(async ({ request }) => {
      let form: FormData;
      try {
        form = await request.formData();
      } catch {
        return invalid("The request must be multipart/form-data with a 'file' and a 'purpose'.");
      }
      const file = form.get("file");
      const purpose = form.get("purpose");
      if (!(file instanceof Blob)) return invalid("Missing required parameter: 'file'.", "file");
      if (typeof purpose !== "string" || !(FILE_PURPOSES as readonly string[]).includes(purpose)) {
        return invalid(`Invalid value for 'purpose': expected one of ${FILE_PURPOSES.join(", ")}.`, "purpose", "invalid_value");
      }
      const bytes = new Uint8Array(await file.arrayBuffer());
      const filename = file instanceof File ? file.name : "upload";
      if (purpose === "batch") {
        if (!filename.endsWith(".jsonl")) return invalid("Invalid file format for Batch API. Must be .jsonl", "file");
        if (bytes.byteLength > 200 * 1024 * 1024) return invalid("File is too large for the Batch API: the limit is 200 MB.", "file");
      }
      return json(fileObject(state.addFile(ctx, { bytes, filename, purpose })));
    }),
  );

  const getFile = faulted(
    plain(BATCH_ROUTES.fileGet, fileKeyOf),
    authed(({ params }) => {
      const f = state.files.get(String(params.id));
      return f ? json(fileObject(f)) : notFound("file", String(params.id));
    }),
  );

  const listFiles = faulted(
    plain(BATCH_ROUTES.fileList),
    authed(({ request }) => {
      const url = new URL(request.url);
      const purpose = url.searchParams.get("purpose");
      const order = url.searchParams.get("order") ?? "desc";
      if (order !== "asc" && order !== "desc") return invalid("Invalid value for 'order': expected 'asc' or 'desc'.", "order", "invalid_value");
      const files = [...state.files.values()].filter((f) => purpose === null || f.purpose === purpose).map(fileObject);
      if (order === "desc") files.reverse();
      const answer = page(files, url);
      return answer instanceof Response ? answer : json(answer);
    }),
  );

  const fileContent = faulted(
    plain(BATCH_ROUTES.fileContent, fileKeyOf),
    authed(({ params }) => {
      const f = state.files.get(String(params.id));
      if (!f) return notFound("file", String(params.id));
      if (f.purpose === "batch") {
        // As the API: an uploaded batch input cannot be downloaded, only the batch's outputs.
        return errorBody({ message: "Not allowed to download files of purpose: batch", type: "invalid_request_error", param: null, code: null }, 400);
      }
      return new Response(Buffer.from(f.bytes), { status: 200, headers: { "content-type": "application/octet-stream" } });
    }),
  );

  const createBatch = faulted(
    plain(BATCH_ROUTES.batchCreate, async (request) => {
      const body = (await request.json().catch(() => ({}))) as { input_file_id?: unknown };
      return state.files.get(String(body.input_file_id))?.sha256.slice(0, 16) ?? `unknown:${String(body.input_file_id)}`;
    }),
    authed(async ({ request }) => {
      const body = await readJsonObject(request);
      if (body instanceof Response) return body;
      if (typeof body.input_file_id !== "string") return invalid("Missing required parameter: 'input_file_id'.", "input_file_id");
      if (body.endpoint !== BATCH_ENDPOINT) {
        return invalid(`Invalid value for 'endpoint': this mock batches only '${BATCH_ENDPOINT}'.`, "endpoint", "invalid_value");
      }
      if (body.completion_window !== "24h") return invalid("Invalid value for 'completion_window': expected '24h'.", "completion_window", "invalid_value");
      const metadata = body.metadata ?? null;
      if (metadata !== null) {
        const entries = typeof metadata === "object" && !Array.isArray(metadata) ? Object.entries(metadata) : undefined;
        const ok = entries && entries.length <= 16 && entries.every(([k, v]) => k.length <= 64 && typeof v === "string" && v.length <= 512);
        if (!ok) return invalid("Invalid 'metadata': at most 16 string pairs, keys up to 64 and values up to 512 characters.", "metadata", "invalid_value");
      }
      const input = state.files.get(body.input_file_id);
      if (!input) return notFound("file", body.input_file_id);
      if (input.purpose !== "batch") return invalid(`File ${input.id} has purpose '${input.purpose}'; a batch needs purpose 'batch'.`, "input_file_id");
      const key = state.contentKey(input);
      const fate = drawFate(ctx, key);
      const checked = readInputFile(input);
      const batch: StoredBatch = {
        id: state.nextId(ctx, "batch"),
        createdAt: ctx.now(),
        inputFileId: input.id,
        metadata: metadata as Record<string, string> | null,
        key,
        fate,
        schedule: ctx.faults.plan.openai?.batches?.schedule ?? { validatingMs: 50, inProgressMs: 200, finalizingMs: 50 },
        errors: checked.errors.length > 0 || !fate.failed ? checked.errors : [enqueuedTokenLimit(checked.lines)],
        cancelledAt: undefined,
        result: undefined,
      };
      state.batches.set(batch.id, batch);
      ctx.stats.batches.created++;
      return json(await batchObject(ctx, state, batch));
    }),
  );

  const getBatch = faulted(
    plain(BATCH_ROUTES.batchGet, batchKeyOf),
    authed(async ({ params }) => {
      const b = state.batches.get(String(params.id));
      return b ? json(await batchObject(ctx, state, b)) : notFound("batch", String(params.id));
    }),
  );

  const listBatches = faulted(
    plain(BATCH_ROUTES.batchList),
    authed(async ({ request }) => {
      const all = [...state.batches.values()].reverse();
      const answer = page(all, new URL(request.url));
      if (answer instanceof Response) return answer;
      const data = await Promise.all(answer.data.map((b) => batchObject(ctx, state, b)));
      return json({ ...answer, data });
    }),
  );

  const cancelBatch = faulted(
    plain(BATCH_ROUTES.batchCancel, batchKeyOf),
    authed(async ({ params }) => {
      const b = state.batches.get(String(params.id));
      if (!b) return notFound("batch", String(params.id));
      const status = await settle(ctx, state, b);
      if (status === "completed" || status === "failed" || status === "expired") {
        return errorBody({ message: `Cannot cancel a batch with status '${status}'.`, type: "invalid_request_error", param: null, code: null }, 409);
      }
      b.cancelledAt ??= ctx.now();
      return json(await batchObject(ctx, state, b));
    }),
  );

  return [
    http.post("*/v1/files", createFile),
    http.get("*/v1/files", listFiles),
    http.get("*/v1/files/:id", getFile),
    http.get("*/v1/files/:id/content", fileContent),
    http.post("*/v1/batches", createBatch),
    http.get("*/v1/batches", listBatches),
    http.get("*/v1/batches/:id", getBatch),
    http.post("*/v1/batches/:id/cancel", cancelBatch),
  ];
}
