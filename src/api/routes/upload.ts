/**
 * `POST /upload` in two forms, and `POST /upload/{document_id}/finalize`.
 *
 * 1. Direct: `multipart/form-data` with one `file` part (optional fields `filename`, which
 *    overrides the part's file name, `sha256`, checked against the bytes received, and the
 *    scheduling fields `priority` and `tenant_id`, see `schedulingOf`). The
 *    file is streamed to a temporary file while it is hashed (memory stays flat up to
 *    UPLOAD_MAX_BYTES), then stored at `{user_id}/raw/{document_id}/{name}` and the job is
 *    created in `uploaded`.
 * 2. Signed: `application/json` `{filename, mime, bytes, sha256}` creates or reuses the
 *    document and answers a Supabase Storage signed upload URL; the client `PUT`s the bytes
 *    there and calls finalize, which checks the object exists and creates the job.
 *
 * Idempotent: `document_id = uuidv5("{user_id}:{sha256}")` and `job_id = uuidv5("{document_id}:job")`,
 * so the same user sending the same bytes again gets the same document and job: 201 the first
 * time, 200 after. A repeat whose job already exists touches neither storage nor the database.
 *
 * The storage key uses a sanitised file name (ASCII letters, digits, `.`, `_`, `-`): Supabase
 * refuses many characters in keys, and a name like `../x` must not shape a path. The original
 * name is kept in `documents.filename`.
 */
import { createHash, randomUUID } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import multipart from "@fastify/multipart";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type pg from "pg";
import { z } from "zod";
import { PipelineError } from "../../errors.ts";
import { documentId as makeDocumentId, jobId as makeJobId } from "../../ids.ts";
import { createJob } from "../../state-machine/transition.ts";
import { Priority, TenantId, type Lane } from "../../scheduling/lanes.ts";
import { principalOf, requireAuth, type Principal } from "../auth.ts";
import { ApiError, notFound, parseOr400 } from "../errors.ts";
import type { ObjectStore } from "../app.ts";

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/** A user-facing file name: any text without control characters, 1 to 255 characters. */
export const FileName = z
  .string()
  .trim()
  .min(1, "is empty; give the file's name, e.g. report.pdf")
  .max(255, "is too long (at most 255 characters)")
  .refine((s) => !CONTROL.test(s), "must not contain control characters");

const Sha256 = z
  .string()
  .regex(/^[0-9a-fA-F]{64}$/, "must be the file's SHA-256 as 64 hex characters")
  .transform((s) => s.toLowerCase());

/** Optional on both upload forms: the job's lane, and (service role only) its fair-share tenant. */
const Scheduling = z.object({ priority: Priority.optional(), tenant_id: TenantId.optional() });
const SCHEDULING_FIELDS = Object.keys(Scheduling.shape);

const SignedUploadRequest = z.object({
  filename: FileName,
  mime: z.string().min(1, "is empty; give the file's MIME type, e.g. application/pdf").max(255, "is too long"),
  bytes: z.number({ error: "must be the file's size in bytes (a number)" }).int("must be a whole number").min(1, "must be at least 1: empty files are not accepted"),
  sha256: Sha256,
  ...Scheduling.shape,
});

const MultipartFields = z.object({
  filename: FileName.optional(),
  sha256: Sha256.optional(),
  ...Scheduling.shape,
});

export const DocumentParams = z.object({
  document_id: z.uuid("must be a document id (a UUID, as returned by POST /upload)").transform((s) => s.toLowerCase()),
});

/** The storage key's last segment: safe ASCII, never empty, never `.`/`..`, extension kept. */
export function storageName(filename: string): string {
  const base = filename
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "") // é → e: drop the combining marks NFKD split off
    .split(/[\\/]/)
    .pop()!
    .replace(/[^A-Za-z0-9._-]+/g, "_")
    .replace(/^[._]+/, "")
    .slice(-200);
  return base.length > 0 ? base : "file";
}

export function rawPath(userId: string, documentId: string, filename: string): string {
  return `${userId}/raw/${documentId}/${storageName(filename)}`;
}

/** `text/plain; charset=utf-8` → `text/plain`. */
function baseMime(mime: string): string {
  return mime.split(";")[0]!.trim().toLowerCase();
}

export async function uploadRoutes(app: FastifyInstance): Promise<void> {
  const { pool, config, store, auth } = app.deps;
  const maxBytes = config.UPLOAD_MAX_BYTES;
  const allowed = new Set(config.UPLOAD_ALLOWED_MIME.map(baseMime));

  await app.register(multipart, {
    limits: { fileSize: maxBytes, files: 1, fields: 6, fieldSize: 1024, parts: 7, headerPairs: 100 },
    throwFileSizeLimit: true,
  });

  const checkMime = (mime: string, field: string) => {
    if (!allowed.has(baseMime(mime))) {
      throw new ApiError(
        415,
        "unsupported_mime",
        `${field}: '${baseMime(mime).slice(0, 100)}' is not accepted; allowed types (UPLOAD_ALLOWED_MIME): ${[...allowed].join(", ")}.`,
      );
    }
  };
  const tooLarge = () =>
    new ApiError(413, "file_too_large", `The file is larger than the limit of ${maxBytes} bytes (UPLOAD_MAX_BYTES); split it or raise the limit.`);

  app.post("/upload", { onRequest: requireAuth(auth) }, async (request, reply) => {
    const who = principalOf(request);
    const userId = requireUser(who);
    if (request.isMultipart()) return direct(request, reply, who, userId);
    const type = baseMime(String(request.headers["content-type"] ?? ""));
    if (type !== "application/json") {
      throw new ApiError(415, "unsupported_media_type", "POST /upload takes multipart/form-data (a 'file' part) or application/json {filename, mime, bytes, sha256}.");
    }
    const body = parseOr400(SignedUploadRequest, request.body, "body");
    const scheduling = schedulingOf(who, body);
    checkMime(body.mime, "mime");
    if (body.bytes > maxBytes) throw tooLarge();
    const docId = makeDocumentId(userId, body.sha256);
    const jobId = makeJobId(docId);
    const existingJob = await findJob(pool, docId);
    if (existingJob) {
      return reply.code(200).send({ document_id: docId, job_id: jobId, status: existingJob.status, upload: null });
    }
    const { row, created } = await upsertDocument(pool, {
      documentId: docId, userId, filename: body.filename, mime: baseMime(body.mime), bytes: body.bytes, sha256: body.sha256,
      rawPath: rawPath(userId, docId, body.filename), ...scheduling,
    });
    // upsert: a client that lost the first URL (or whose PUT failed half-way) can try again.
    const signed = await storageCall(() => store.createSignedUploadUrl(row.raw_path, { upsert: true }));
    return reply.code(created ? 201 : 200).send({
      document_id: docId,
      job_id: jobId,
      status: null,
      upload: { signed_url: signed.signedUrl, token: signed.token, path: row.raw_path, method: "PUT", finalize: `/upload/${docId}/finalize` },
    });
  });

  async function direct(request: FastifyRequest, reply: FastifyReply, who: Principal, userId: string) {
    const declared = Number(request.headers["content-length"]);
    // Refuse before reading when the declared body cannot fit (64 KiB for the form's framing).
    if (Number.isFinite(declared) && declared > maxBytes + 64 * 1024) throw tooLarge();
    const dir = await mkdtemp(join(tmpdir(), "upload-pipeline-api-"));
    try {
      const fields: Record<string, string> = {};
      let file: { path: string; sha256: string; bytes: number; filename: string; mime: string } | undefined;
      try {
        for await (const part of request.parts()) {
          if (part.type === "field") {
            if (part.fieldname !== "filename" && part.fieldname !== "sha256" && !SCHEDULING_FIELDS.includes(part.fieldname)) {
              throw new ApiError(400, "unknown_field", `Form field '${part.fieldname.slice(0, 50)}' is not accepted; send 'file' and optionally 'filename', 'sha256', 'priority' and 'tenant_id'.`);
            }
            fields[part.fieldname] = String(part.value);
            continue;
          }
          if (part.fieldname !== "file") {
            throw new ApiError(400, "unknown_field", `The file part must be named 'file' (got '${part.fieldname.slice(0, 50)}').`);
          }
          checkMime(part.mimetype, "file");
          const path = join(dir, "body");
          const hash = createHash("sha256");
          let bytes = 0;
          await pipeline(
            part.file,
            async function* (source: AsyncIterable<Buffer>) {
              for await (const chunk of source) {
                hash.update(chunk);
                bytes += chunk.length;
                yield chunk;
              }
            },
            createWriteStream(path),
          );
          file = { path, sha256: hash.digest("hex"), bytes, filename: part.filename, mime: baseMime(part.mimetype) };
        }
      } catch (err) {
        if ((err as { code?: string }).code === "FST_REQ_FILE_TOO_LARGE") throw tooLarge();
        if (err instanceof ApiError || typeof (err as { statusCode?: unknown }).statusCode === "number") throw err;
        // A local file-system failure (ENOSPC, EACCES) is ours: a 500.
        if (typeof (err as { syscall?: unknown }).syscall === "string") throw err;
        // Anything else busboy throws ("Unexpected end of form", "Malformed part header") is the body's fault.
        throw new ApiError(400, "invalid_multipart", "The multipart/form-data body is malformed or truncated; send it again.");
      }
      if (!file) throw new ApiError(400, "missing_file", "No file part: send the file as a multipart/form-data part named 'file'.");
      const extra = parseOr400(MultipartFields, fields, "form");
      const scheduling = schedulingOf(who, extra);
      const filename = parseOr400(FileName, extra.filename ?? file.filename, "filename");
      if (file.bytes === 0) throw new ApiError(400, "empty_file", "file: is empty; empty files are not accepted.");
      if (extra.sha256 && extra.sha256 !== file.sha256) {
        throw new ApiError(400, "checksum_mismatch", "sha256: does not match the bytes received; the upload was damaged or the checksum is wrong. Send it again.");
      }

      const docId = makeDocumentId(userId, file.sha256);
      const jobId = makeJobId(docId);
      const existingJob = await findJob(pool, docId);
      if (existingJob) return reply.code(200).send(uploadAnswer(docId, jobId, existingJob.status, file, filename));
      const { row } = await upsertDocument(pool, {
        documentId: docId, userId, filename, mime: file.mime, bytes: file.bytes, sha256: file.sha256,
        rawPath: rawPath(userId, docId, filename), ...scheduling,
      });
      const path = file.path;
      await storageCall(() => store.upload(row.raw_path, Readable.toWeb(createReadStream(path)) as ReadableStream<Uint8Array>, file.mime, { upsert: true }));
      const { created } = await createJob(pool, { jobId, documentId: docId, correlationId: randomUUID(), maxAttempts: config.MAX_ATTEMPTS, lane: row.lane });
      request.log.info({ document_id: docId, job_id: jobId, bytes: file.bytes, created }, "upload stored");
      return reply.code(created ? 201 : 200).send(uploadAnswer(docId, jobId, "uploaded", file, filename, row.raw_path));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  app.post("/upload/:document_id/finalize", { onRequest: requireAuth(auth) }, async (request, reply) => {
    const who = principalOf(request);
    const { document_id: docId } = parseOr400(DocumentParams, request.params, "path");
    const doc = await findOwnedDocument(pool, docId, who);
    if (!doc) throw notFound(`Document ${docId}`);
    const jobId = makeJobId(docId);
    const existingJob = await findJob(pool, docId);
    if (existingJob) return reply.code(200).send({ document_id: docId, job_id: jobId, status: existingJob.status });
    if (!(await storageCall(() => store.exists(doc.raw_path)))) {
      throw new ApiError(409, "upload_missing", `No object at ${doc.raw_path} yet: PUT the file to the signed URL from POST /upload, then call finalize again.`);
    }
    const { created } = await createJob(pool, { jobId, documentId: docId, correlationId: randomUUID(), maxAttempts: config.MAX_ATTEMPTS, lane: doc.lane });
    const job = await findJob(pool, docId);
    return reply.code(created ? 201 : 200).send({ document_id: docId, job_id: jobId, status: job?.status ?? "uploaded" });
  });
}

function uploadAnswer(
  docId: string,
  jobId: string,
  status: string,
  file: { sha256: string; bytes: number; mime: string },
  filename: string,
  raw?: string,
) {
  return { document_id: docId, job_id: jobId, status, filename, mime: file.mime, bytes: file.bytes, sha256: file.sha256, ...(raw ? { raw_path: raw } : {}) };
}

/** Uploads belong to a user: a service-role token needs a `sub` to upload on someone's behalf. */
function requireUser(who: Principal): string {
  if (who.userId) return who.userId;
  throw new ApiError(403, "user_required", "Uploads belong to a user: use the user's access token (a service-role token needs a 'sub' claim naming the user).");
}

/**
 * The lane and tenant an upload asked for. Only the service role may name a tenant (a backend
 * uploading for an organisation); a user's uploads are their own tenant.
 */
function schedulingOf(who: Principal, fields: z.infer<typeof Scheduling>): { lane: Lane; tenantId: string | null } {
  if (fields.tenant_id !== undefined && !who.isService) {
    throw new ApiError(403, "tenant_forbidden", "tenant_id: only a service-role caller may name a tenant; leave it out and the upload counts towards your own share.");
  }
  return { lane: fields.priority ?? "interactive", tenantId: fields.tenant_id ?? null };
}

/** Storage failures: 503 when retrying may help, 502 otherwise; never the upstream's text. */
async function storageCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof PipelineError && err.errorClass === "permanent") {
      throw Object.assign(new ApiError(502, "storage_error", "Storage refused the operation; the server logged the cause."), { cause: err });
    }
    throw Object.assign(new ApiError(503, "storage_unavailable", "Storage is unavailable; retry shortly.", { "retry-after": "5" }), { cause: err });
  }
}

interface DocumentRow {
  document_id: string;
  user_id: string;
  filename: string;
  raw_path: string;
  lane: Lane;
}

async function upsertDocument(
  pool: pg.Pool,
  d: { documentId: string; userId: string; filename: string; mime: string; bytes: number; sha256: string; rawPath: string; lane: Lane; tenantId: string | null },
): Promise<{ row: DocumentRow; created: boolean }> {
  const inserted = await pool.query<DocumentRow>(
    `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path, lane, tenant_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (document_id) DO NOTHING
     RETURNING document_id, user_id, filename, raw_path, lane`,
    [d.documentId, d.userId, d.filename, d.mime, d.bytes, d.sha256, d.rawPath, d.lane, d.tenantId],
  );
  if (inserted.rows[0]) return { row: inserted.rows[0], created: true };
  const { rows } = await pool.query<DocumentRow>(
    "SELECT document_id, user_id, filename, raw_path, lane FROM upload_pipeline.documents WHERE document_id = $1",
    [d.documentId],
  );
  return { row: rows[0]!, created: false };
}

async function findJob(pool: pg.Pool, documentId: string): Promise<{ job_id: string; status: string } | undefined> {
  const { rows } = await pool.query<{ job_id: string; status: string }>(
    "SELECT job_id, status FROM upload_pipeline.upload_jobs WHERE document_id = $1",
    [documentId],
  );
  return rows[0];
}

/** The document if `who` may see it: its owner, or the service role. Anyone else gets undefined (→ 404). */
export async function findOwnedDocument(pool: pg.Pool, documentId: string, who: Principal): Promise<DocumentRow | undefined> {
  const { rows } = await pool.query<DocumentRow>(
    `SELECT document_id, user_id, filename, raw_path, lane FROM upload_pipeline.documents
      WHERE document_id = $1 AND ($2::boolean OR user_id = $3::uuid)`,
    [documentId, who.isService, who.userId],
  );
  return rows[0];
}
