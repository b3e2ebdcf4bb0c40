/**
 * `POST /webhooks/llamaparse` (SPEC §6). Checks run cheapest and least revealing first, and
 * nothing is written until a delivery has passed all of them:
 *
 * | check | refusal | metrics reason |
 * |---|---|---|
 * | body ≤ WEBHOOK_MAX_BYTES (read as raw bytes, never re-serialised) | 413 | `oversized` |
 * | `Content-Type: application/json` | 415 | `wrong_content_type` |
 * | JSON, and the zod schema `{event_id, event_type, timestamp, data: {job_id | id}}` | 400 | `malformed` |
 * | the job named by our `X-Upload-Pipeline-Job-Id` header (else the one whose `parse_job_id` is `data.job_id`/`data.id`) | 401 (same body as forged) | `unknown_job` |
 * | `LC-Signature: sha256=<hex>` = HMAC-SHA256(job's webhook_secret, raw body), constant time | 401 | `forged` |
 * | body `timestamp` within ±300 s of our clock | 401 (same body as forged) | `stale` |
 * | `event_id` new in `webhook_log` | 200, nothing changes | `duplicate` |
 *
 * Accepted deliveries count as `accepted`, or `early` when kept for a job not yet `parse_queued`.
 *
 * Deliveries are routed by our own job id, which the submit stage gives LlamaParse as a
 * `webhook_headers` entry: a delivery can then be verified before `parse_job_id` is recorded.
 * (The header is not signed; it only picks the secret to verify with, so a wrong one fails the
 * signature.) Deliveries without it (jobs submitted before it existed) are found by parse job id.
 * An unknown job, a forged signature and a stale timestamp all answer the same 401, so job ids
 * cannot be probed; the log line and the metric say which check failed. The timestamp is checked
 * after the signature, so only the genuine sender (whose clock may drift) ever sees `stale`.
 * A validly signed re-delivery of a recorded `event_id` is a duplicate whatever its bytes
 * (LlamaParse re-signs a retry with a new `timestamp`): only the secret's holder can sign one.
 *
 * An accepted delivery is recorded in `webhook_log` in the same transaction as its effect, with
 * the job row locked (so it serialises with the submit stage's commit of `parse_queued`):
 * - the job is still `uploaded` (LlamaParse finished before our commit): a terminal event is kept
 *   as outcome `early` and answered 202; the submit stage finds it when it commits
 *   `parse_queued` and fetches the result at once;
 * - `parse.error` / `parse.cancelled`: `parse_queued → failed_parse` (actor `webhook`, no lease);
 * - `parse.success` / `parse.partial_success`: recorded, then handed to parse intake
 *   (`deps.onParseEvent`) after the commit, without holding up the answer. Parse intake is the
 *   one place that fetches the markdown from LlamaParse and stores it; if it fails or the
 *   process dies, the worker's reconciler finds the job still `parse_queued` and polls LlamaParse
 *   itself: at once after a failed intake, past the webhook deadline after a crash;
 * - `parse.pending` / `parse.running`: recorded only.
 * A job that is elsewhere, waits for another parse job (an earlier submission's late event), or
 * is leased by the reconciler right now is left as it is: the event is recorded with outcome
 * `not_applicable` and answered 200, so LlamaParse stops retrying.
 */
import { withTransaction } from "../../db/transaction.ts";
import { createHmac, timingSafeEqual } from "node:crypto";
import type { FastifyBaseLogger, FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type pg from "pg";
import { z } from "zod";
import { TransitionConflict } from "../../errors.ts";
import { sha256 } from "../../ids.ts";
import { transition } from "../../state-machine/transition.ts";
import { JOB_ID_HEADER } from "../../stages/submitParse.ts";
import { ApiError, describeIssues, sendError } from "../errors.ts";
import type { WebhookReason } from "../metrics.ts";
import { contextOf, inSpan } from "../../tracing.ts";
import { serveInSpan } from "../requestSpans.ts";

export const WEBHOOK_TOLERANCE_SECONDS = 300;

export const EVENT_TYPES = ["parse.success", "parse.error", "parse.partial_success", "parse.cancelled", "parse.pending", "parse.running"] as const;

// eslint-disable-next-line no-control-regex
const Id = z
  .string()
  .min(1, "is empty")
  .max(256, "is too long (at most 256 characters)")
  .regex(/^[^\u0000-\u001f\u007f]+$/, "must not contain control characters");

export const WebhookBody = z.object({
  event_id: Id,
  event_type: z.enum(EVENT_TYPES, { error: `must be one of ${EVENT_TYPES.join(", ")}` }),
  timestamp: z.number({ error: "must be Unix seconds (a number)" }),
  data: z
    .object({ id: Id.optional(), job_id: Id.optional() })
    .refine((d) => d.job_id !== undefined || d.id !== undefined, "must carry job_id (or id), LlamaParse's parse job id"),
});
export type WebhookBody = z.infer<typeof WebhookBody>;

const SIGNATURE = /^sha256=([0-9a-fA-F]{64})$/;

/** The refusal for a forged or stale delivery: one body for both, with nothing to learn from. */
const notAccepted = () => new ApiError(401, "unauthorized", "Webhook signature verification failed.");

interface JobRow {
  job_id: string;
  document_id: string;
  status: string;
  attempts: number;
  parse_job_id: string | null;
  webhook_secret: string | null;
  correlation_id: string;
  traceparent: string | null;
}

const TERMINAL_EVENTS: ReadonlySet<string> = new Set(["parse.success", "parse.partial_success", "parse.error", "parse.cancelled"]);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Verifying against this when no job matched costs what a real check costs. */
export const NO_SECRET = "no-job-matched-this-delivery";

/** Expected `LC-Signature` value for `raw` under `secret`: `sha256=<hex>`. */
export function signWebhook(secret: string, raw: string | Uint8Array): string {
  return `sha256=${createHmac("sha256", secret).update(raw).digest("hex")}`;
}

function signatureValid(header: unknown, secret: string | null, raw: Buffer): boolean {
  const expected = createHmac("sha256", secret ?? NO_SECRET)
    .update(raw)
    .digest();
  if (!secret || typeof header !== "string") return false;
  const match = SIGNATURE.exec(header.trim());
  if (!match) return false;
  const given = Buffer.from(match[1]!, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

export async function webhookRoutes(app: FastifyInstance): Promise<void> {
  const { pool, config, metrics, onParseEvent, now, parseIntakes } = app.deps;
  const maxBytes = config.WEBHOOK_MAX_BYTES;

  // The signature is over the exact bytes sent, so this scope keeps the body as a Buffer for
  // every content type and checks the type itself (a 415 it can count).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", { parseAs: "buffer", bodyLimit: maxBytes }, (_request, body, done) => done(null, body));

  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
      metrics.webhook("oversized");
      return sendError(request, reply, new ApiError(413, "payload_too_large", `The webhook body is larger than ${maxBytes} bytes (WEBHOOK_MAX_BYTES).`));
    }
    if (!(err instanceof ApiError) && typeof err.statusCode === "number" && err.statusCode >= 400 && err.statusCode < 500) {
      metrics.webhook("malformed");
    }
    return sendError(request, reply, err);
  });

  // Intake runs after the answer; close() waits for what is in flight so a graceful shutdown
  // does not cut a fetch-and-store in half (the reconciler would recover it, but slower).
  app.addHook("onClose", () => parseIntakes.settled());

  const reject = (request: FastifyRequest, reason: WebhookReason, err: ApiError, fields: Record<string, unknown> = {}): never => {
    metrics.webhook(reason);
    request.log.warn({ reason, ...fields }, "webhook refused");
    throw err;
  };

  app.post("/webhooks/llamaparse", async (request, reply) => {
    const raw = Buffer.isBuffer(request.body) ? request.body : undefined;
    const type = String(request.headers["content-type"] ?? "")
      .split(";")[0]!
      .trim()
      .toLowerCase();
    if (type !== "application/json") {
      reject(request, "wrong_content_type", new ApiError(415, "unsupported_media_type", "Content-Type must be application/json."));
    }
    if (!raw || raw.length === 0) reject(request, "malformed", new ApiError(400, "invalid_json", "The body is empty; expected the LlamaParse event JSON."));
    let json: unknown;
    try {
      json = JSON.parse(raw!.toString("utf8"));
    } catch {
      reject(request, "malformed", new ApiError(400, "invalid_json", "The body is not valid JSON."));
    }
    const parsed = WebhookBody.safeParse(json);
    if (!parsed.success) {
      reject(request, "malformed", new ApiError(400, "invalid_event", `Invalid webhook event: ${describeIssues(parsed.error, "body")}.`));
    }
    const event = parsed.data!;
    const parseJobId = event.data.job_id ?? event.data.id!;

    const job = await findJob(pool, request.headers[JOB_ID_HEADER], parseJobId);
    const signed = signatureValid(request.headers["lc-signature"], job?.webhook_secret ?? null, raw!);
    if (!job) reject(request, "unknown_job", notAccepted());
    if (!signed) reject(request, "forged", notAccepted(), { job_id: job!.job_id });
    const log = request.log.child({ job_id: job!.job_id, correlation_id: job!.correlation_id, event_type: event.event_type });
    const skew = now() / 1000 - event.timestamp;
    if (!(Math.abs(skew) <= WEBHOOK_TOLERANCE_SECONDS)) {
      reject(request, "stale", notAccepted(), { job_id: job!.job_id, skew_seconds: Math.round(skew) });
    }

    // A genuine delivery joins the document's trace (a forged or stale one stays out of it).
    return serveInSpan(request, contextOf(job!.traceparent), () => accept(reply, job!, event, parseJobId, raw!, log));
  });

  /** Record a genuine delivery, answer, and hand a finished parse to the intake (after the answer). */
  async function accept(reply: FastifyReply, job: JobRow, event: WebhookBody, parseJobId: string, raw: Buffer, log: FastifyBaseLogger) {
    const result = await record(pool, job.job_id, event, parseJobId, sha256(raw));
    if (result === "duplicate") {
      metrics.webhook("duplicate");
      log.info("duplicate webhook delivery; nothing changed");
      return reply.code(200).send({ received: true, duplicate: true });
    }
    metrics.webhook(result === "early" ? "early" : "accepted");
    log.info({ outcome: result }, "webhook accepted");
    if (result === "handed_off") {
      const ev = {
        jobId: job!.job_id,
        documentId: job!.document_id,
        parseJobId,
        eventId: event.event_id,
        eventType: event.event_type as "parse.success" | "parse.partial_success",
        correlationId: job!.correlation_id,
      };
      const intake = new Promise<void>((resolve) => setImmediate(resolve))
        .then(() => inSpan("parse intake", { attributes: { "job.id": ev.jobId, "document.id": ev.documentId } }, () => onParseEvent(ev)))
        .then(
          (outcome) => log.info({ outcome }, "parse intake finished"),
          (err: unknown) => {
            log.error({ err: err instanceof Error ? err.message : String(err) }, "parse intake failed; the reconciler takes the job now");
            return reconcileNow(pool, ev.jobId).catch(() => {});
          },
        );
      parseIntakes.track(intake);
    }
    return reply.code(result === "early" ? 202 : 200).send({ received: true, outcome: result });
  }
}

/**
 * Intake failed after an accepted delivery (LlamaParse or Storage answered 5xx, say): the
 * parse is done, so make the reconciler due now rather than at the webhook deadline (120 s by
 * default), and let it retry with the worker's backoff and attempts. Only an unleased job still
 * waiting in `parse_queued` is touched; the NOTIFY trigger wakes an idle worker.
 */
async function reconcileNow(pool: pg.Pool, jobId: string): Promise<void> {
  await pool.query(
    `UPDATE upload_pipeline.upload_jobs SET next_attempt_at = now(), updated_at = now()
      WHERE job_id = $1 AND status = 'parse_queued' AND lease_token IS NULL AND next_attempt_at > now()`,
    [jobId],
  );
}

/** The job a delivery is for: by our job id header, else (older submissions) by parse job id. */
async function findJob(pool: pg.Pool, header: unknown, parseJobId: string): Promise<JobRow | undefined> {
  const columns = "job_id, document_id, status, attempts, parse_job_id, webhook_secret, correlation_id, traceparent";
  if (header !== undefined) {
    if (typeof header !== "string" || !UUID.test(header)) return undefined;
    const { rows } = await pool.query<JobRow>(`SELECT ${columns} FROM upload_pipeline.upload_jobs WHERE job_id = $1`, [header]);
    return rows[0];
  }
  const { rows } = await pool.query<JobRow>(`SELECT ${columns} FROM upload_pipeline.upload_jobs WHERE parse_job_id = $1 ORDER BY created_at DESC LIMIT 1`, [
    parseJobId,
  ]);
  return rows[0];
}

type RecordResult = "duplicate" | "early" | "handed_off" | "failed_parse" | "recorded" | "not_applicable";

/**
 * Record the delivery and apply its effect in one transaction, with the job row locked. The
 * unique `delivery_key` is the gate: of two concurrent copies of one event exactly one inserts;
 * the other (and any later, validly signed re-delivery) is a duplicate.
 */
async function record(pool: pg.Pool, jobId: string, event: WebhookBody, parseJobId: string, bodySha: string): Promise<RecordResult> {
  return withTransaction(pool, async (client): Promise<RecordResult> => {
    const locked = await client.query<JobRow>(
      `SELECT job_id, document_id, status, attempts, parse_job_id, webhook_secret, correlation_id
         FROM upload_pipeline.upload_jobs WHERE job_id = $1 FOR UPDATE`,
      [jobId],
    );
    const job = locked.rows[0]!;
    const inserted = await client.query<{ id: string }>(
      `INSERT INTO upload_pipeline.webhook_log (delivery_key, job_id, parse_job_id, event_type, event_ts, body_sha256, outcome)
       VALUES ($1, $2, $3, $4, $5, $6, 'received')
       ON CONFLICT (delivery_key) DO NOTHING RETURNING id`,
      [event.event_id, job.job_id, parseJobId, event.event_type, event.timestamp, bodySha],
    );
    if (!inserted.rows[0]) return "duplicate"; // seen before: nothing was written
    const result = await apply(client, job, event, parseJobId);
    await client.query("UPDATE upload_pipeline.webhook_log SET outcome = $2 WHERE id = $1", [inserted.rows[0].id, result]);
    return result;
  });
}

async function apply(client: pg.PoolClient, job: JobRow, event: WebhookBody, parseJobId: string): Promise<RecordResult> {
  // Early: LlamaParse finished a submission whose parse_queued has not committed yet. An event for
  // the parse job the row still names is a superseded one instead (the job was retried from
  // failed_parse back to uploaded), and must not be applied to the next submission.
  if (job.status === "uploaded" && TERMINAL_EVENTS.has(event.event_type)) return job.parse_job_id === parseJobId ? "not_applicable" : "early";
  const waiting = job.status === "parse_queued" && job.parse_job_id === parseJobId;
  switch (event.event_type) {
    case "parse.success":
    case "parse.partial_success":
      return waiting ? "handed_off" : "not_applicable";
    case "parse.error":
    case "parse.cancelled":
      return waiting ? failParse(client, job, event) : "not_applicable";
    default:
      return "recorded";
  }
}

async function failParse(client: pg.PoolClient, job: JobRow, event: WebhookBody): Promise<RecordResult> {
  const what = event.event_type === "parse.error" ? "failed" : "was cancelled";
  try {
    await transition(client, {
      jobId: job.job_id,
      from: "parse_queued",
      to: "failed_parse",
      actor: "webhook",
      fence: { kind: "unleased", by: "webhook" },
      releaseLease: true,
      lastError: {
        class: "permanent",
        code: event.event_type === "parse.error" ? "llamaparse_failed" : "llamaparse_cancelled",
        message: `LlamaParse reports the parse job ${what} (${event.event_type}); retry with POST /jobs/{document_id}/retry.`,
        stage: "parse_queued",
        attempt: job.attempts,
        correlation_id: job.correlation_id,
      },
      detail: { event_id: event.event_id, event_type: event.event_type },
    });
    return "failed_parse";
  } catch (err) {
    // The job moved on or a live lease holds it (the reconciler): leave it to them.
    if (err instanceof TransitionConflict) return "not_applicable";
    throw err;
  }
}
