/**
 * One error body for every route: `{"error": {"code", "message"}}`. `code` is stable and
 * machine-readable; `message` names the field and the fix. Nothing else leaves the process: no
 * stack, no upstream message, no secret. A 5xx says only "internal error" and the request id,
 * which the log line carries next to the real cause.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from "fastify";
import type { z } from "zod";

export interface ErrorBody {
  error: { code: string; message: string };
}

/** A refusal the API means to send, with its status. */
export class ApiError extends Error {
  readonly statusCode: number;
  readonly code: string;
  readonly headers: Record<string, string>;

  constructor(statusCode: number, code: string, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.statusCode = statusCode;
    this.code = code;
    this.headers = headers;
    this.name = "ApiError";
  }
}

/** The one answer to a missing, expired, forged or otherwise unusable bearer token (no hints). */
export const unauthorized = () =>
  new ApiError(401, "unauthorized", "A valid bearer token is required: send 'Authorization: Bearer <Supabase access token>'.", {
    "www-authenticate": 'Bearer realm="upload-pipeline"',
  });

export const notFound = (what: string) => new ApiError(404, "not_found", `${what} was not found.`);

/** zod issues as one sentence per field: `filename: too long (at most 255 characters)`. */
export function describeIssues(error: z.ZodError, root = "body"): string {
  const parts = error.issues.slice(0, 5).map((issue) => {
    const path = issue.path.length ? issue.path.map(String).join(".") : root;
    return `${path}: ${issue.message}`;
  });
  if (error.issues.length > 5) parts.push(`and ${error.issues.length - 5} more problems`);
  return parts.join("; ");
}

/** Parse with zod or throw a 400 naming each offending field. */
export function parseOr400<T extends z.ZodType>(schema: T, value: unknown, root: string, code = "invalid_request"): z.infer<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  throw new ApiError(400, code, `Invalid ${root}: ${describeIssues(result.error, root)}.`);
}

/**
 * Map anything thrown in a handler, a hook or by fastify itself to a status and the one body.
 * Fastify's own client errors (body too large, bad JSON, unsupported media type) keep their
 * status but get our wording; anything without a 4xx status is a 500.
 */
export function toErrorResponse(err: unknown): { status: number; body: ErrorBody; headers: Record<string, string> } {
  if (err instanceof ApiError) {
    return { status: err.statusCode, body: { error: { code: err.code, message: err.message } }, headers: err.headers };
  }
  const fe = err as Partial<FastifyError>;
  const status = typeof fe.statusCode === "number" ? fe.statusCode : 500;
  const known = FASTIFY_ERRORS[fe.code ?? ""];
  if (known) return { status: known.status ?? status, body: { error: { code: known.code, message: known.message } }, headers: {} };
  if (status >= 400 && status < 500) {
    return {
      status,
      body: { error: { code: "bad_request", message: "The request could not be processed; check its method, headers and body." } },
      headers: {},
    };
  }
  return { status: 500, body: { error: { code: "internal", message: "Internal error; the server logged it. Retry later." } }, headers: {} };
}

const UPLOAD_PARTS = "Too many form parts; send one 'file' part and optionally the fields 'filename', 'sha256', 'priority' and 'tenant_id'.";

const FASTIFY_ERRORS: Record<string, { code: string; message: string; status?: number }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { code: "payload_too_large", message: "The request body is larger than this route accepts." },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    code: "unsupported_media_type",
    message: "Unsupported Content-Type; see the route's documentation for the accepted types.",
    status: 415,
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { code: "bad_request", message: "Content-Length does not match the body." },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: "invalid_json", message: "The body is empty; send a JSON object." },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: "invalid_json", message: "The body is not valid JSON." },
  FST_ERR_CTP_EMPTY_TYPE: { code: "unsupported_media_type", message: "The Content-Type header is empty.", status: 415 },
  FST_ERR_CTP_INVALID_TYPE: { code: "unsupported_media_type", message: "The Content-Type header is invalid.", status: 415 },
  FST_ERR_BAD_URL: { code: "bad_request", message: "The URL could not be decoded." },
  FST_ERR_ASYNC_CONSTRAINT: { code: "bad_request", message: "The request could not be routed." },
  // @fastify/multipart's codes (node_modules/@fastify/multipart/index.js); its limits answer 413, but
  // a second file or a stray field is a malformed request, not a large one.
  FST_INVALID_MULTIPART_CONTENT_TYPE: { code: "unsupported_media_type", message: "Expected multipart/form-data.", status: 415 },
  FST_FILES_LIMIT: { code: "too_many_files", message: "Send exactly one file part named 'file' per upload.", status: 400 },
  FST_FIELDS_LIMIT: { code: "too_many_fields", message: UPLOAD_PARTS, status: 400 },
  FST_PARTS_LIMIT: { code: "too_many_parts", message: UPLOAD_PARTS, status: 400 },
  FST_PROTO_VIOLATION: { code: "invalid_request", message: "A form field name is not allowed.", status: 400 },
  FST_MP_PREMATURE_CLOSE: { code: "invalid_multipart", message: "The multipart/form-data body ended early; send it again.", status: 400 },
};

/** Send the error body; log 5xx with the cause (the client never sees it). */
export function sendError(request: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const { status, body, headers } = toErrorResponse(err);
  if (status >= 500) request.log.error({ err }, "request failed");
  else request.log.info({ status, code: body.error.code }, "request refused");
  return reply.code(status).headers(headers).type("application/json; charset=utf-8").send(body);
}
