/**
 * Supabase Storage client for one bucket (SPEC §2, §7), over `@supabase/storage-js`.
 *
 * The SDK answers `{ data, error }`; this wrapper throws instead, always a `PipelineError`, so
 * the worker's retry policy and circuit breaker see one error shape for every service.
 *
 * Storage's error convention is unusual: every client error is HTTP 400 and the logical status
 * travels as a string in the body (`{statusCode: "404", code: "NoSuchKey"}`), which storage-js
 * surfaces as `StorageApiError { status: 400, statusCode: "404", code: "NoSuchKey" }`. We
 * classify on the logical status, so a missing object is permanent and not "a 400".
 */
import { StorageApiError, StorageClient, StorageError, StorageUnknownError } from "@supabase/storage-js";
import { PermanentError, PipelineError, TransientError } from "../errors.ts";
import { redact } from "./redact.ts";

export interface StorageClientOptions {
  /** Project URL, e.g. `http://127.0.0.1:54321`; the client talks to `${supabaseUrl}/storage/v1`. */
  supabaseUrl: string;
  /** Service-role JWT, sent as `Authorization: Bearer` and `apikey`. */
  serviceRoleKey: string;
  bucket: string;
  /**
   * Abort any request (a download's body included) that takes longer than this, in ms, so a
   * connection that never answers is closed rather than left open. Unset: no limit.
   */
  timeoutMs?: number | undefined;
  fetch?: typeof fetch | undefined;
}

/** What `upload` accepts: bytes, a web stream (sent with `duplex: "half"`, never buffered here), text or a Blob (sent as multipart). */
export type UploadBody = Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array> | string;

export interface ObjectInfo {
  /** Bytes stored (null when Storage has no size for it). */
  size: number | null;
  /** The `Content-Type` the object was uploaded with. */
  contentType: string | null;
}

export interface ObjectStorage {
  readonly bucket: string;
  /**
   * Store an object. With `upsert: false` an existing object is an error
   * (`storage_already_exists`, permanent); use `upsert: true` for idempotent rewrites of
   * deterministic content.
   */
  upload(path: string, body: UploadBody, contentType: string, options?: { upsert?: boolean }): Promise<{ path: string; fullPath: string }>;
  /**
   * Stream an object. The status is checked before this resolves (a missing object rejects
   * with `storage_not_found`); errors while reading the stream are `PipelineError`s too.
   * The body is not buffered: memory stays flat in object size.
   */
  download(path: string, signal?: AbortSignal): Promise<ReadableStream<Uint8Array>>;
  /** Whole object in memory; for small objects (parsed markdown of bounded size, tests). */
  downloadBytes(path: string, signal?: AbortSignal): Promise<Uint8Array>;
  /**
   * The object's size and content type as Storage recorded them, or null when there is no such
   * object. Any error other than "no such key" (bad JWT, no bucket, 5xx) throws.
   */
  info(path: string): Promise<ObjectInfo | null>;
  /** A signed URL the client can `PUT` the object to without credentials (SPEC §6 upload). */
  createSignedUploadUrl(path: string, options?: { upsert?: boolean }): Promise<{ signedUrl: string; token: string; path: string }>;
  /** Delete objects (≤ 1000 per call); returns the paths actually deleted (missing ones are not an error). */
  remove(paths: string[]): Promise<string[]>;
}

/**
 * Create the storage client for one bucket.
 *
 * @example
 * const storage = createStorageClient({ supabaseUrl, serviceRoleKey, bucket: "documents" });
 * await storage.upload(`${userId}/parsed/${documentId}.md`, markdown, "text/markdown", { upsert: true });
 * const stream = await storage.download(rawPath, signal);
 */
export function createStorageClient(options: StorageClientOptions): ObjectStorage {
  const { bucket, serviceRoleKey } = options;
  const url = `${options.supabaseUrl.replace(/\/+$/, "")}/storage/v1`;
  const client = new StorageClient(
    url,
    { Authorization: `Bearer ${serviceRoleKey}`, apikey: serviceRoleKey },
    withRequestTimeout(options.fetch, options.timeoutMs),
  );
  // throwOnError: errors arrive as exceptions, including from `exists` and `download`.
  const files = () => client.from(bucket).throwOnError();
  const fail = (err: unknown, op: string, path: string) => mapStorageError(err, `${op} ${bucket}/${path}`, [serviceRoleKey]);

  return {
    bucket,

    async upload(path, body, contentType, { upsert = false } = {}) {
      try {
        const { data } = await files().upload(path, body, { contentType, upsert });
        if (!data) throw new StorageError("upload answered without data");
        return { path: data.path, fullPath: data.fullPath };
      } catch (err) {
        throw fail(err, "upload", path);
      }
    },

    async download(path, signal) {
      let stream: ReadableStream<Uint8Array> | null;
      try {
        ({ data: stream } = await files()
          .download(path, {}, signal ? { signal } : undefined)
          .asStream());
      } catch (err) {
        throw fail(err, "download", path);
      }
      if (!stream) throw new TransientError("storage_bad_response", `download ${bucket}/${path}: the answer had no body`);
      return mapStreamErrors(stream, (err) => fail(err, "download", path));
    },

    async downloadBytes(path, signal) {
      const stream = await this.download(path, signal);
      try {
        return new Uint8Array(await new Response(stream).arrayBuffer());
      } catch (err) {
        throw fail(err, "download", path);
      }
    },

    async info(path) {
      try {
        // `GET /object/info/{bucket}/{path}` (not HEAD): a HEAD has no body, so a bad JWT or a
        // missing bucket would look like a missing object.
        const { data } = await files().info(path);
        return { size: typeof data?.size === "number" ? data.size : null, contentType: data?.contentType ?? null };
      } catch (err) {
        const mapped = fail(err, "info", path);
        // With throwOnError the SDK throws "no such key" as well; that is our `null`.
        if (mapped.code === "storage_not_found") return null;
        throw mapped;
      }
    },

    async createSignedUploadUrl(path, { upsert = false } = {}) {
      try {
        const { data } = await files().createSignedUploadUrl(path, { upsert });
        if (!data) throw new StorageError("createSignedUploadUrl answered without data");
        return data;
      } catch (err) {
        throw fail(err, "createSignedUploadUrl", path);
      }
    },

    async remove(paths) {
      if (paths.length === 0) return [];
      if (paths.length > 1000) throw new PermanentError("storage_bad_request", `remove: at most 1000 paths per call, got ${paths.length}`);
      try {
        const { data } = await files().remove(paths);
        return (data ?? []).map((o) => o.name);
      } catch (err) {
        throw fail(err, "remove", paths.length === 1 ? paths[0]! : `[${paths.length} paths]`);
      }
    },
  };
}

/**
 * Map a storage-js failure to a `PipelineError`. The `status` recorded is the logical status
 * (404 for a missing key, not the 400 it travelled in).
 *
 * | logical status / code | code | class |
 * |---|---|---|
 * | 404 `NoSuchKey` | `storage_not_found` | permanent |
 * | 404 `NoSuchBucket` | `storage_bucket_not_found` | permanent |
 * | 409 `KeyAlreadyExists` / `Duplicate` | `storage_already_exists` | permanent |
 * | 401 / 403 (`AccessDenied`, `InvalidJWT`) | `storage_unauthorized` | permanent |
 * | 413 | `storage_too_large` | permanent |
 * | 429 | `storage_rate_limited` | transient |
 * | 408, 5xx (HTTP or logical) | `storage_unavailable` | transient |
 * | other 4xx | `storage_bad_request` | permanent |
 * | network failure | `storage_connection` | transient |
 * | caller's abort | `aborted` | transient |
 */
export function mapStorageError(err: unknown, what: string, secrets: string[] = []): PipelineError {
  if (err instanceof PipelineError) return err;
  const clean = (m: string) => redact(m, secrets);
  if (err instanceof StorageApiError) {
    const logical = /^\d{3}$/.test(err.statusCode) ? Number(err.statusCode) : err.status;
    const status = err.status >= 500 ? err.status : logical;
    const detail = clean(`${what}: ${err.message} (HTTP ${err.status}, statusCode ${err.statusCode}${err.code ? `, ${err.code}` : ""})`);
    const opts = { cause: err, status };
    if (status >= 500 || status === 408) return new TransientError("storage_unavailable", `Storage unavailable: ${detail}`, opts);
    if (status === 429) return new TransientError("storage_rate_limited", `Storage rate limited: ${detail}`, opts);
    if (status === 404)
      return new PermanentError(err.code === "NoSuchBucket" ? "storage_bucket_not_found" : "storage_not_found", `Storage object not found: ${detail}`, opts);
    if (status === 409) return new PermanentError("storage_already_exists", `Storage object already exists: ${detail}`, opts);
    if (status === 401 || status === 403) return new PermanentError("storage_unauthorized", `Storage refused the credentials: ${detail}`, opts);
    if (status === 413) return new PermanentError("storage_too_large", `Storage object too large: ${detail}`, opts);
    return new PermanentError("storage_bad_request", `Storage rejected the request: ${detail}`, opts);
  }
  const original = err instanceof StorageUnknownError ? err.originalError : err;
  if (isAbort(original)) return new TransientError("aborted", `${what}: aborted by the caller`, { cause: err });
  if (err instanceof StorageUnknownError || original instanceof TypeError) {
    return new TransientError("storage_connection", clean(`Storage connection failed: ${what}: ${describe(original)}`), { cause: err });
  }
  const e = err instanceof Error ? err : new Error(String(err));
  return new TransientError(err instanceof StorageError ? "storage_bad_response" : "storage_unexpected", clean(`${what}: ${e.message}`), { cause: e });
}

function isAbort(err: unknown): boolean {
  return err instanceof Error && (err.name === "AbortError" || (err.cause instanceof Error && err.cause.name === "AbortError"));
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = err.cause;
  const code = cause instanceof Error ? (cause as { code?: unknown }).code : undefined;
  return cause instanceof Error ? `${err.message}: ${cause.message}${typeof code === "string" ? ` [${code}]` : ""}` : err.message;
}

/**
 * Re-expose `source` with its read errors mapped (a reset mid-body becomes a transient
 * `PipelineError`). Pull-based, so backpressure still reaches the socket and nothing is
 * buffered beyond what the consumer asks for.
 */
function mapStreamErrors(source: ReadableStream<Uint8Array>, map: (err: unknown) => PipelineError): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      } catch (err) {
        controller.error(map(err));
      }
    },
    async cancel(reason) {
      await reader.cancel(reason);
    },
  });
}

/** `fetch` (or `base`) with every request aborted after `ms`, on top of the caller's own signal. */
function withRequestTimeout(base: typeof fetch | undefined, ms: number | undefined): typeof fetch | undefined {
  if (ms === undefined) return base;
  const send = base ?? fetch;
  return (input, init) => {
    const limit = AbortSignal.timeout(ms);
    return send(input, { ...init, signal: init?.signal ? AbortSignal.any([init.signal, limit]) : limit });
  };
}
