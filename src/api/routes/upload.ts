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
 *    document and answers a Supabase Storage signed upload URL, signed without upsert so the
 *    object can be written once; the client `PUT`s the bytes there and calls finalize, which
 *    trusts nothing it was told: the stored object's size, content type, SHA-256 and content
 *    must be what was declared (and within the limits), else the object is removed and no job
 *    is created.
 *
 * Both paths look at the bytes, not only the label (`content/sniff.ts`): a file whose content
 * is not its declared type is refused (415 `content_mismatch`), and a part sent without a type
 * (or as `application/octet-stream`) takes the type its bytes and extension show.
 *
 * Idempotent: `document_id = uuidv5("{user_id}:{sha256}")` and `job_id = uuidv5("{document_id}:job")`,
 * so the same user sending the same bytes again gets the same document and job: 201 the first
 * time, 200 after. A repeat whose job already exists touches neither storage nor the database.
 *
 * The storage key uses a sanitised file name (ASCII letters, digits, `.`, `_`, `-`): Supabase
 * refuses many characters in keys, and a name like `../x` must not shape a path. The original
 * name is kept in `documents.filename`.
 */
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { Readable } from "node:stream";
import { createReadStream } from "node:fs";
import multipart from "@fastify/multipart";
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { z } from "zod";
import { PipelineError } from "../../errors.ts";
import { documentId as makeDocumentId, jobId as makeJobId } from "../../ids.ts";
import { createJob } from "../../state-machine/transition.ts";
import { currentTraceparent } from "../../tracing.ts";
import { serveInSpan } from "../requestSpans.ts";
import { Priority, TenantId, type Lane } from "../../scheduling/lanes.ts";
import type { ObjectInfo } from "../../clients/storage.ts";
import { contentMatches, OCTET_STREAM, sniffFile, typeOfUnlabelled } from "../../content/sniff.ts";
import { spoolToFile, withTempDir } from "../../content/spool.ts";
import { principalOf, requireAuth, type Principal } from "../auth.ts";
import type { ObjectStore } from "../deps.ts";
import { findJob, findOwnedDocument, insertDocument, DocumentParams, type DocumentRow } from "../documents.ts";
import { ApiError, notFound, parseOr400 } from "../errors.ts";

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
  bytes: z
    .number({ error: "must be the file's size in bytes (a number)" })
    .int("must be a whole number")
    .min(1, "must be at least 1: empty files are not accepted"),
  sha256: Sha256,
  ...Scheduling.shape,
});

const MultipartFields = z.object({
  filename: FileName.optional(),
  sha256: Sha256.optional(),
  ...Scheduling.shape,
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

/** What both upload paths enforce: the size limit, the allowed types, and content that is what it claims. */
function uploadRules(maxBytes: number, allowedTypes: readonly string[]) {
  const allowed = new Set(allowedTypes.map(baseMime));
  const listed = [...allowed].join(", ");
  return {
    maxBytes,
    tooLarge: () =>
      new ApiError(413, "file_too_large", `The file is larger than the limit of ${maxBytes} bytes (UPLOAD_MAX_BYTES); split it or raise the limit.`),
    /** 415 unless `mime` is one of UPLOAD_ALLOWED_MIME; `field` names where the type came from. */
    checkAllowed(mime: string, field: string) {
      if (!allowed.has(mime)) {
        throw new ApiError(415, "unsupported_mime", `${field}: '${mime.slice(0, 100)}' is not accepted; allowed types (UPLOAD_ALLOWED_MIME): ${listed}.`);
      }
    },
    /** 415 unless bytes that sniff as `found` may be called `declared`. */
    checkContent(declared: string, found: string, field: string) {
      if (!contentMatches(declared, found)) {
        throw new ApiError(
          415,
          "content_mismatch",
          declared.startsWith("text/") && found === OCTET_STREAM
            ? `${field}: declared '${declared.slice(0, 100)}' but the content is not UTF-8 text (binary bytes, or another encoding such as UTF-16); save it as UTF-8 or send it with its real type (allowed: ${listed}).`
            : `${field}: declared '${declared.slice(0, 100)}' but the content is '${found}'; send the file with its real type (allowed: ${listed}).`,
        );
      }
    },
  };
}
type UploadRules = ReturnType<typeof uploadRules>;

export async function uploadRoutes(app: FastifyInstance): Promise<void> {
  const { pool, config, store, auth } = app.deps;
  const rules = uploadRules(config.UPLOAD_MAX_BYTES, config.UPLOAD_ALLOWED_MIME);

  await app.register(multipart, {
    limits: { fileSize: rules.maxBytes, files: 1, fields: 6, fieldSize: 1024, parts: 7, headerPairs: 100 },
    throwFileSizeLimit: true,
  });

  app.post("/upload", { onRequest: requireAuth(auth) }, async (request, reply) => {
    const who = principalOf(request);
    const userId = requireUser(who);
    if (request.isMultipart()) return serveInSpan(request, undefined, () => direct(request, reply, who, userId));
    const type = baseMime(String(request.headers["content-type"] ?? ""));
    if (type !== "application/json") {
      throw new ApiError(
        415,
        "unsupported_media_type",
        "POST /upload takes multipart/form-data (a 'file' part) or application/json {filename, mime, bytes, sha256}.",
      );
    }
    const body = parseOr400(SignedUploadRequest, request.body, "body");
    const scheduling = schedulingOf(who, body);
    const mime = baseMime(body.mime);
    rules.checkAllowed(mime, "mime");
    if (body.bytes > rules.maxBytes) throw rules.tooLarge();
    const docId = makeDocumentId(userId, body.sha256);
    const jobId = makeJobId(docId);
    const existingJob = await findJob(pool, docId);
    if (existingJob) {
      return reply.code(200).send({ document_id: docId, job_id: jobId, status: existingJob.status, upload: null });
    }
    // Sign first, so a refusal writes nothing; the document is created once the URL exists.
    const known = await findOwnedDocument(pool, docId, { userId, role: "authenticated", isService: false });
    let path = known?.raw_path ?? rawPath(userId, docId, body.filename);
    let signed = await signUpload(store, path, docId);
    let created = false;
    if (!known) {
      const inserted = await insertDocument(pool, {
        documentId: docId,
        userId,
        filename: body.filename,
        mime,
        bytes: body.bytes,
        sha256: body.sha256,
        rawPath: path,
        ...scheduling,
      });
      created = inserted.created;
      // A concurrent request created it first, under its own file name.
      if (inserted.row.raw_path !== path) {
        path = inserted.row.raw_path;
        signed = await signUpload(store, path, docId);
      }
    }
    return reply.code(created ? 201 : 200).send({
      document_id: docId,
      job_id: jobId,
      status: null,
      upload: { signed_url: signed.signedUrl, token: signed.token, path, method: "PUT", finalize: `/upload/${docId}/finalize` },
    });
  });

  async function direct(request: FastifyRequest, reply: FastifyReply, who: Principal, userId: string) {
    const declaredLength = Number(request.headers["content-length"]);
    // Refuse before reading when the declared body cannot fit (64 KiB for the form's framing).
    if (Number.isFinite(declaredLength) && declaredLength > rules.maxBytes + 64 * 1024) throw rules.tooLarge();
    return withTempDir(async (dir) => {
      const path = join(dir, "body");
      const fields: Record<string, string> = {};
      let file: { sha256: string; bytes: number; filename: string; declared: string | null } | undefined;
      try {
        for await (const part of request.parts()) {
          if (part.type === "field") {
            if (part.fieldname !== "filename" && part.fieldname !== "sha256" && !SCHEDULING_FIELDS.includes(part.fieldname)) {
              throw new ApiError(
                400,
                "unknown_field",
                `Form field '${part.fieldname.slice(0, 50)}' is not accepted; send 'file' and optionally 'filename', 'sha256', 'priority' and 'tenant_id'.`,
              );
            }
            // A repeated field would leave which value counts to the order of the parts.
            if (Object.hasOwn(fields, part.fieldname))
              throw new ApiError(400, "duplicate_field", `Form field '${part.fieldname}' is sent twice; send it once.`);
            fields[part.fieldname] = String(part.value);
            continue;
          }
          if (part.fieldname !== "file") {
            throw new ApiError(400, "unknown_field", `The file part must be named 'file' (got '${part.fieldname.slice(0, 50)}').`);
          }
          const declared = baseMime(part.mimetype ?? "");
          const labelled = declared !== "" && declared !== OCTET_STREAM;
          // A labelled type that is not allowed is refused before a byte is read.
          if (labelled) rules.checkAllowed(declared, "file");
          const spooled = await spoolToFile(part.file, path, rules.maxBytes, rules.tooLarge);
          file = { ...spooled, filename: part.filename, declared: labelled ? declared : null };
        }
      } catch (err) {
        throw multipartError(err, rules.tooLarge);
      }
      if (!file) throw new ApiError(400, "missing_file", "No file part: send the file as a multipart/form-data part named 'file'.");
      const extra = parseOr400(MultipartFields, fields, "form");
      const scheduling = schedulingOf(who, extra);
      const filename = parseOr400(FileName, extra.filename ?? file.filename, "filename");
      if (file.bytes === 0) throw new ApiError(400, "empty_file", "file: is empty; empty files are not accepted.");
      if (extra.sha256 && extra.sha256 !== file.sha256) {
        throw new ApiError(
          400,
          "checksum_mismatch",
          "sha256: does not match the bytes received; the upload was damaged or the checksum is wrong. Send it again.",
        );
      }
      const found = await sniffFile(path);
      let mime: string;
      // busboy labels a part that has no Content-Type `text/plain`, so binary content under
      // that label is taken as unlabelled rather than refused as a mismatch.
      if (file.declared && !(file.declared === "text/plain" && !found.startsWith("text/"))) {
        rules.checkContent(file.declared, found, "file");
        mime = file.declared;
      } else {
        mime = typeOfUnlabelled(filename, found);
        rules.checkAllowed(mime, "file (sent without a type; its content is)");
      }

      const docId = makeDocumentId(userId, file.sha256);
      const jobId = makeJobId(docId);
      const answer = { document_id: docId, job_id: jobId, filename, mime, bytes: file.bytes, sha256: file.sha256 };
      const existingJob = await findJob(pool, docId);
      if (existingJob) return reply.code(200).send({ ...answer, status: existingJob.status });
      const { row } = await insertDocument(pool, {
        documentId: docId,
        userId,
        filename,
        mime,
        bytes: file.bytes,
        sha256: file.sha256,
        rawPath: rawPath(userId, docId, filename),
        ...scheduling,
      });
      await storageCall(() => store.upload(row.raw_path, Readable.toWeb(createReadStream(path)) as ReadableStream<Uint8Array>, mime, { upsert: true }));
      const { created } = await createJob(pool, {
        jobId,
        documentId: docId,
        correlationId: randomUUID(),
        maxAttempts: config.MAX_ATTEMPTS,
        lane: row.lane,
        traceparent: currentTraceparent(),
      });
      request.log.info({ document_id: docId, job_id: jobId, bytes: file.bytes, created }, "upload stored");
      return reply.code(created ? 201 : 200).send({ ...answer, status: "uploaded", raw_path: row.raw_path });
    });
  }

  app.post("/upload/:document_id/finalize", { onRequest: requireAuth(auth) }, (request, reply) =>
    serveInSpan(request, undefined, () => finalize(request, reply)),
  );

  async function finalize(request: FastifyRequest, reply: FastifyReply) {
    const who = principalOf(request);
    const { document_id: docId } = parseOr400(DocumentParams, request.params, "path");
    const doc = await findOwnedDocument(pool, docId, who);
    if (!doc) throw notFound(`Document ${docId}`);
    const jobId = makeJobId(docId);
    const existingJob = await findJob(pool, docId);
    if (existingJob) return reply.code(200).send({ document_id: docId, job_id: jobId, status: existingJob.status });
    const info = await storageCall(() => store.info(doc.raw_path));
    if (!info) {
      throw uploadMissing(doc.raw_path);
    }
    await verifyStored(store, rules, doc, info, request.log);
    const { created } = await createJob(pool, {
      jobId,
      documentId: docId,
      correlationId: randomUUID(),
      maxAttempts: config.MAX_ATTEMPTS,
      lane: doc.lane,
      traceparent: currentTraceparent(),
    });
    const job = await findJob(pool, docId);
    return reply.code(created ? 201 : 200).send({ document_id: docId, job_id: jobId, status: job?.status ?? "uploaded" });
  }
}

/**
 * Finalize trusts nothing the client said: the object must be within the limit and the declared
 * size, stored with an allowed type that fits the declared one, hash to the declared SHA-256
 * (the document's id is derived from it), and sniff as the declared type. Any refusal removes
 * the object first, so nothing half-uploaded stays behind and the client can PUT again.
 */
async function verifyStored(store: ObjectStore, rules: UploadRules, doc: DocumentRow, info: ObjectInfo, log: FastifyBaseLogger): Promise<void> {
  const declaredBytes = Number(doc.bytes);
  const largerThanDeclared = () =>
    new ApiError(
      413,
      "file_too_large",
      `The stored file is larger than the ${declaredBytes} bytes declared in 'bytes'; PUT the file that was declared, or start again with POST /upload.`,
    );
  try {
    if (info.size !== null && info.size > rules.maxBytes) throw rules.tooLarge();
    if (info.size !== null && info.size > declaredBytes) throw largerThanDeclared();
    const stored = baseMime(info.contentType ?? "");
    rules.checkAllowed(stored, "Content-Type of the PUT");
    if (!contentMatches(doc.mime, stored)) {
      throw new ApiError(
        415,
        "content_mismatch",
        `Content-Type of the PUT: '${stored}' is not the declared 'mime' '${doc.mime}'; PUT with Content-Type: ${doc.mime}.`,
      );
    }
    await withTempDir(async (dir) => {
      const path = join(dir, "object");
      const spooled = await spoolToFile(await download(store, doc.raw_path), path, Math.min(rules.maxBytes, declaredBytes), largerThanDeclared);
      if (spooled.bytes !== declaredBytes) {
        throw new ApiError(400, "size_mismatch", `bytes: ${declaredBytes} were declared but ${spooled.bytes} were stored; PUT the whole file again.`);
      }
      if (spooled.sha256 !== doc.file_sha256) {
        throw new ApiError(
          400,
          "checksum_mismatch",
          "sha256: does not match the stored bytes; the upload was damaged or the checksum is wrong. PUT the file again.",
        );
      }
      rules.checkContent(doc.mime, await sniffFile(path), "mime");
    });
  } catch (err) {
    // A local file-system failure (ENOSPC) is ours: a 500, and the object stays for a retry.
    if (typeof (err as { syscall?: unknown }).syscall === "string") throw err;
    if (!(err instanceof ApiError) || err.statusCode >= 500) throw storageFailure(err);
    // Gone already: nothing to remove (and a new PUT may be arriving).
    if (err.code === "upload_missing") throw err;
    try {
      await store.remove([doc.raw_path]);
    } catch (removal) {
      log.warn({ err: (removal as Error).message, path: doc.raw_path }, "could not remove a refused upload; the next finalize tries again");
    }
    throw err;
  }
}

/** The stored object as a stream; gone since `info()` (a concurrent finalize removed it) is 409 `upload_missing`. */
async function download(store: ObjectStore, path: string): Promise<ReadableStream<Uint8Array>> {
  try {
    return await store.download(path);
  } catch (err) {
    if (err instanceof PipelineError && err.code === "storage_not_found") throw uploadMissing(path);
    throw storageFailure(err);
  }
}

const uploadMissing = (path: string) =>
  new ApiError(409, "upload_missing", `No object at ${path} yet: PUT the file to the signed URL from POST /upload, then call finalize again.`);

/** Sign an upload URL that can write the object once (no upsert). */
async function signUpload(store: ObjectStore, path: string, docId: string) {
  try {
    return await store.createSignedUploadUrl(path, { upsert: false });
  } catch (err) {
    if (err instanceof PipelineError && err.code === "storage_already_exists") {
      throw new ApiError(409, "already_uploaded", `The file for this document is already stored: call POST /upload/${docId}/finalize.`);
    }
    throw storageFailure(err);
  }
}

/** What busboy and the spool throw while reading the form, as an answer. */
function multipartError(err: unknown, tooLarge: () => ApiError): unknown {
  if ((err as { code?: string }).code === "FST_REQ_FILE_TOO_LARGE") return tooLarge();
  if (err instanceof ApiError || typeof (err as { statusCode?: unknown }).statusCode === "number") return err;
  // A local file-system failure (ENOSPC, EACCES) is ours: a 500.
  if (typeof (err as { syscall?: unknown }).syscall === "string") return err;
  // Anything else busboy throws ("Unexpected end of form", "Malformed part header") is the body's fault.
  return new ApiError(400, "invalid_multipart", "The multipart/form-data body is malformed or truncated; send it again.");
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
    throw new ApiError(
      403,
      "tenant_forbidden",
      "tenant_id: only a service-role caller may name a tenant; leave it out and the upload counts towards your own share.",
    );
  }
  return { lane: fields.priority ?? "interactive", tenantId: fields.tenant_id ?? null };
}

/** Storage failures: 503 when retrying may help, 502 otherwise; never the upstream's text. */
function storageFailure(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof PipelineError && err.errorClass === "permanent") {
    return Object.assign(new ApiError(502, "storage_error", "Storage refused the operation; the server logged the cause."), { cause: err });
  }
  return Object.assign(new ApiError(503, "storage_unavailable", "Storage is unavailable; retry shortly.", { "retry-after": "5" }), { cause: err });
}

async function storageCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw storageFailure(err);
  }
}
