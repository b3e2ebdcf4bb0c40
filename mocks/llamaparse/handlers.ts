/**
 * msw handlers for LlamaParse's v2 parse API as `@llamaindex/llama-cloud` calls it
 * (`parsing.create` with and without `upload_file`, `parsing.get` with `expand`,
 * `parsing.cancel`), plus `files.create` (`POST /api/v1/beta/files`) for `file_id` jobs.
 * Errors are FastAPI's: `{"detail": "..."}`, and 422 `{"detail": [{type, loc, msg}]}`.
 */
import { http } from "msw";
import { faulted, gatewayPage, json, pathFingerprint, type MockContext } from "../shared/http.ts";
import { sha256Hex } from "../shared/rng.ts";
import { joinPages, plainText } from "./markdown.ts";
import type { LlamaParseState, ParseJob } from "./jobs.ts";
import type { WebhookConfiguration } from "./webhook.ts";

/** Route ids of the LlamaParse mock in stats and fault plans. */
export const LLAMAPARSE_ROUTES = {
  upload: "llamaparse.upload",
  create: "llamaparse.create",
  get: "llamaparse.get",
  cancel: "llamaparse.cancel",
  versions: "llamaparse.versions",
  list: "llamaparse.list",
  fileCreate: "llamaparse.files.create",
} as const;

/** Options of the LlamaParse mock. */
export interface LlamaParseMockOptions {
  /** The only bearer key accepted. */
  apiKey: string;
}

const TIERS = ["fast", "cost_effective", "agentic", "agentic_plus"] as const;

type Detail = { type: string; loc: Array<string | number>; msg: string };
const detail = (message: string, status: number) => json({ detail: message }, status);
const unprocessable = (details: Detail[]) => json({ detail: details }, 422);

function errorResponse(fault: number | string): Response {
  switch (fault) {
    case 402:
      return detail("Insufficient credits: your organization has run out of credits. Please upgrade your plan or add credits.", 402);
    case 429:
      // LlamaCloud's 429 carries no Retry-After.
      return detail("Too many requests. Please slow down and try again later.", 429);
    case 502:
    case 504:
      return gatewayPage(fault);
    case 503:
      return detail("Service temporarily unavailable", 503);
    default:
      return detail("Internal Server Error", 500);
  }
}

/** Validates the create options (the `configuration` JSON or the JSON body). */
function readConfiguration(
  config: Record<string, unknown>,
  prefix: Array<string | number>,
): Detail[] | { tier: string; version: string; webhooks: WebhookConfiguration[]; name: string | null; userMetadata: Record<string, string> | null } {
  const errors: Detail[] = [];
  const tier = config.tier;
  if (tier === undefined) errors.push({ type: "missing", loc: [...prefix, "tier"], msg: "Field required" });
  else if (typeof tier !== "string" || !(TIERS as readonly string[]).includes(tier)) {
    errors.push({ type: "literal_error", loc: [...prefix, "tier"], msg: "Input should be 'fast', 'cost_effective', 'agentic' or 'agentic_plus'" });
  }
  const version = config.version;
  if (version === undefined) errors.push({ type: "missing", loc: [...prefix, "version"], msg: "Field required" });
  else if (typeof version !== "string") errors.push({ type: "string_type", loc: [...prefix, "version"], msg: "Input should be a valid string" });
  const hooks = config.webhook_configurations ?? [];
  const webhooks: WebhookConfiguration[] = [];
  if (!Array.isArray(hooks)) {
    errors.push({ type: "list_type", loc: [...prefix, "webhook_configurations"], msg: "Input should be a valid list" });
  } else {
    hooks.forEach((hook: unknown, i) => {
      const loc = [...prefix, "webhook_configurations", i];
      if (typeof hook !== "object" || hook === null) {
        errors.push({ type: "model_type", loc, msg: "Input should be a valid dictionary or instance of WebhookConfiguration" });
        return;
      }
      const h = hook as WebhookConfiguration;
      if (h.webhook_url !== undefined && h.webhook_url !== null) {
        let ok = typeof h.webhook_url === "string";
        if (ok) {
          try {
            new URL(h.webhook_url);
          } catch {
            ok = false;
          }
        }
        if (!ok) errors.push({ type: "url_parsing", loc: [...loc, "webhook_url"], msg: "Input should be a valid URL" });
      }
      if (h.webhook_output_format != null && h.webhook_output_format !== "json" && h.webhook_output_format !== "string") {
        errors.push({ type: "literal_error", loc: [...loc, "webhook_output_format"], msg: "Input should be 'json' or 'string'" });
      }
      if (h.webhook_events != null && (!Array.isArray(h.webhook_events) || !h.webhook_events.every((e) => typeof e === "string"))) {
        errors.push({ type: "list_type", loc: [...loc, "webhook_events"], msg: "Input should be a valid list" });
      }
      webhooks.push({ ...h });
    });
  }
  if (errors.length > 0) return errors;
  const meta = config.user_metadata;
  return {
    tier: tier as string,
    version: version as string,
    webhooks,
    name: typeof config.name === "string" ? config.name : null,
    userMetadata: typeof meta === "object" && meta !== null ? (meta as Record<string, string>) : null,
  };
}

/** The job object of create/cancel answers and of `job` in `GET`. */
export function jobJson(job: ParseJob, withUsage = false) {
  return {
    id: job.id,
    project_id: job.projectId,
    status: job.status,
    created_at: job.createdAt,
    updated_at: job.updatedAt,
    error_message: job.errorMessage,
    name: job.name,
    tier: job.tier,
    user_metadata: job.userMetadata,
    ...(withUsage ? { usage: { credits: job.credits } } : {}),
  };
}

/** Reads `expand`, repeated (`?expand=a&expand=b`) or comma-separated (`?expand=a,b`). */
export function readExpand(url: URL): Set<string> {
  return new Set(
    url.searchParams
      .getAll("expand")
      .flatMap((v) => v.split(","))
      .map((v) => v.trim())
      .filter(Boolean),
  );
}

/** Builds the LlamaParse handlers over `state`. */
export function createLlamaParseHandlers(ctx: MockContext, state: LlamaParseState, options: LlamaParseMockOptions) {
  const R = LLAMAPARSE_ROUTES;
  type Resolver = (info: { request: Request; params: Record<string, unknown> }) => Promise<Response>;
  // What a request is: a parse of some bytes (the file's hash, never the multipart boundary),
  // or a read of a job (its content key, never its per-instance id).
  const fingerprint = async (request: Request, params: Record<string, unknown>): Promise<string> => {
    if (typeof params.jobId === "string") return state.jobs.get(params.jobId)?.key ?? params.jobId;
    if (request.method !== "POST") return pathFingerprint(request);
    if ((request.headers.get("content-type") ?? "").startsWith("multipart/form-data")) {
      const file = await request.formData().then(
        (f) => f.get("file"),
        () => null,
      );
      return file instanceof File ? sha256Hex(new Uint8Array(await file.arrayBuffer())) : "no-file";
    }
    const body = (await request.json().catch(() => ({}))) as { file_id?: unknown; source_url?: unknown };
    const file = typeof body.file_id === "string" ? state.files.get(body.file_id) : undefined;
    return file ? sha256Hex(file.bytes) : `url:${String(body.source_url)}`;
  };
  const route = (id: string, resolver: Resolver) =>
    faulted({ ctx, service: "llamaparse", route: id, errorResponse, fingerprint }, async (info) => {
      const auth = info.request.headers.get("authorization");
      const key = auth ? /^Bearer\s+(.+)$/i.exec(auth)?.[1]?.trim() : undefined;
      if (!key) return detail("Not authenticated", 401);
      if (key !== options.apiKey) return detail("Invalid API key", 401);
      return resolver(info);
    });

  const readForm = async (request: Request): Promise<FormData | Response> => {
    if (!(request.headers.get("content-type") ?? "").startsWith("multipart/form-data")) {
      return unprocessable([{ type: "missing", loc: ["body", "file"], msg: "Field required" }]);
    }
    try {
      return await request.formData();
    } catch {
      return unprocessable([{ type: "value_error", loc: ["body"], msg: "There was an error parsing the body" }]);
    }
  };

  return [
    http.post(
      "*/api/v2/parse/upload",
      route(R.upload, async ({ request }) => {
        const form = await readForm(request);
        if (form instanceof Response) return form;
        const file = form.get("file");
        const errors: Detail[] = [];
        if (!(file instanceof File)) errors.push({ type: "missing", loc: ["body", "file"], msg: "Field required" });
        const raw = form.get("configuration");
        let config: Record<string, unknown> = {};
        if (typeof raw === "string") {
          try {
            const parsed: unknown = JSON.parse(raw);
            if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object");
            config = parsed as Record<string, unknown>;
          } catch {
            errors.push({ type: "json_invalid", loc: ["body", "configuration"], msg: "Invalid JSON" });
          }
        } else {
          errors.push({ type: "missing", loc: ["body", "configuration"], msg: "Field required" });
        }
        const read = errors.length === 0 ? readConfiguration(config, ["body", "configuration"]) : errors;
        if (Array.isArray(read)) return unprocessable(read);
        const f = file as File;
        const job = state.create({
          ...read,
          name: read.name ?? f.name,
          input: { bytes: new Uint8Array(await f.arrayBuffer()), filename: f.name, mime: f.type },
        });
        return json(jobJson(job));
      }),
    ),
    http.post(
      "*/api/v2/parse",
      route(R.create, async ({ request }) => {
        let body: Record<string, unknown>;
        try {
          const parsed: unknown = await request.json();
          if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object");
          body = parsed as Record<string, unknown>;
        } catch {
          return unprocessable([{ type: "json_invalid", loc: ["body"], msg: "JSON decode error" }]);
        }
        const read = readConfiguration(body, ["body"]);
        if (Array.isArray(read)) return unprocessable(read);
        const { source_url: sourceUrl, file_id: fileId } = body;
        if ((typeof sourceUrl === "string") === (typeof fileId === "string")) {
          return unprocessable([{ type: "value_error", loc: ["body"], msg: "Value error, exactly one of file_id or source_url must be provided" }]);
        }
        if (typeof fileId === "string") {
          const file = state.files.get(fileId);
          if (!file) return detail(`File ${fileId} not found`, 404);
          return json(jobJson(state.create({ ...read, name: read.name ?? file.filename, input: file })));
        }
        try {
          new URL(sourceUrl as string);
        } catch {
          return unprocessable([{ type: "url_parsing", loc: ["body", "source_url"], msg: "Input should be a valid URL" }]);
        }
        return json(jobJson(state.create({ ...read, input: { sourceUrl: sourceUrl as string } })));
      }),
    ),
    http.get(
      "*/api/v2/parse",
      route(R.list, async ({ request }) => {
        const q = new URL(request.url).searchParams;
        const after = q.get("created_at_on_or_after");
        const before = q.get("created_at_on_or_before");
        const status = q.get("status");
        const ids = new Set(
          q
            .getAll("job_ids")
            .flatMap((v) => v.split(","))
            .filter(Boolean),
        );
        const size = Math.min(100, Math.max(1, Number(q.get("page_size") ?? 50) || 50));
        const offset = Number(Buffer.from(q.get("page_token") ?? "", "base64url").toString() || "0") || 0;
        const at = (v: string | null) => (v === null ? undefined : Date.parse(v));
        const from = at(after);
        const to = at(before);
        if ((after !== null && Number.isNaN(from)) || (before !== null && Number.isNaN(to))) {
          return unprocessable([
            {
              type: "datetime_from_date_parsing",
              loc: ["query", after !== null && Number.isNaN(from) ? "created_at_on_or_after" : "created_at_on_or_before"],
              msg: "Input should be a valid datetime",
            },
          ]);
        }
        // Newest first, as the service lists them.
        const all = [...state.jobs.values()]
          .filter((j) => (from === undefined || Date.parse(j.createdAt) >= from) && (to === undefined || Date.parse(j.createdAt) <= to))
          .filter((j) => (status === null || j.status === status) && (ids.size === 0 || ids.has(j.id)))
          .reverse();
        const page = all.slice(offset, offset + size);
        const next = offset + size < all.length ? Buffer.from(String(offset + size)).toString("base64url") : null;
        return json({ items: page.map((j) => jobJson(j)), next_page_token: next, total_size: all.length });
      }),
    ),
    http.get(
      "*/api/v2/parse/versions",
      route(R.versions, async () =>
        json({
          tiers: {
            fast: { latest: "2026-06-15", versions: ["2026-06-15"] },
            cost_effective: { latest: "2026-08-19", versions: ["2026-08-19"] },
            agentic: { latest: "2026-09-07", versions: ["2026-09-07"] },
            agentic_plus: { latest: "2026-08-19", versions: ["2026-08-19"] },
          },
        }),
      ),
    ),
    http.get(
      "*/api/v2/parse/:jobId",
      route(R.get, async ({ request, params }) => {
        const job = state.jobs.get(String(params.jobId));
        if (!job) return detail("Job not found", 404);
        const expand = readExpand(new URL(request.url));
        const done = job.status === "COMPLETED" && job.pages !== null;
        const pages = job.pages ?? [];
        const body: Record<string, unknown> = { job: jobJson(job, expand.has("usage")) };
        const pageJson = (markdown: string, i: number) =>
          job.failedPages.has(i + 1)
            ? { page_number: i + 1, success: false, error: "Failed to parse page: the page could not be processed." }
            : { page_number: i + 1, markdown, success: true };
        if (expand.has("markdown")) body.markdown = done ? { pages: pages.map(pageJson) } : null;
        if (expand.has("markdown_full")) body.markdown_full = done ? joinPages(pages.filter((_, i) => !job.failedPages.has(i + 1))) : null;
        if (expand.has("text")) body.text = done ? { pages: pages.map((md, i) => ({ page_number: i + 1, text: plainText(md) })) } : null;
        if (expand.has("text_full")) body.text_full = done ? joinPages(pages.map(plainText)) : null;
        if (expand.has("metadata")) {
          body.metadata = done
            ? {
                pages: pages.map((_, i) => ({
                  page_number: i + 1,
                  confidence: 1,
                  cost_optimized: false,
                  original_orientation_angle: 0,
                  printed_page_number: String(i + 1),
                  triggered_auto_mode: false,
                })),
                document: { confidence: 1, confidence_breakdown: { min_page_score: 1, scored_pages: pages.length, total_pages: pages.length } },
              }
            : null;
        }
        if (expand.has("job_metadata")) body.job_metadata = done ? { job_pages: pages.length, job_credits_usage: job.credits, job_is_cache_hit: false } : null;
        return json(body);
      }),
    ),
    http.post(
      "*/api/v2/parse/:jobId/cancel",
      route(R.cancel, async ({ params }) => {
        const job = state.jobs.get(String(params.jobId));
        if (!job) return detail("Job not found", 404);
        if (!state.cancel(job)) return detail(`Job is already in a terminal state (${job.status}) and cannot be cancelled`, 400);
        return json(jobJson(job));
      }),
    ),
    http.post(
      "*/api/v1/beta/files",
      route(R.fileCreate, async ({ request }) => {
        const form = await readForm(request);
        if (form instanceof Response) return form;
        const file = form.get("file");
        const purpose = form.get("purpose");
        const errors: Detail[] = [];
        if (!(file instanceof File)) errors.push({ type: "missing", loc: ["body", "file"], msg: "Field required" });
        if (typeof purpose !== "string") errors.push({ type: "missing", loc: ["body", "purpose"], msg: "Field required" });
        if (errors.length > 0) return unprocessable(errors);
        const f = file as File;
        const stored = state.addFile({ bytes: new Uint8Array(await f.arrayBuffer()), filename: f.name, mime: f.type }, purpose as string);
        return json({
          id: stored.id,
          name: stored.filename,
          project_id: state.projectId,
          file_type: stored.mime || null,
          purpose: stored.purpose,
          external_file_id: null,
          expires_at: null,
          last_modified_at: stored.createdAt,
        });
      }),
    ),
  ];
}
