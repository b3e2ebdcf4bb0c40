/**
 * msw handlers for Supabase Storage under `/storage/v1`, as `@supabase/storage-js` calls it.
 * Client errors answer HTTP 400 with the logical status as a string in the body, as the real
 * server does: `{statusCode: "404", code: "NoSuchKey", error: "not_found", message: "Object not found"}`.
 */
import { http } from "msw";
import type { FaultDecision } from "../shared/faults.ts";
import { faulted, gatewayPage, json, type MockContext } from "../shared/http.ts";
import { signUrlToken, verifyToken } from "./jwt.ts";
import { fileMetadata, type StorageState, type StoredBucket, type StoredObject } from "./state.ts";

/** Route ids of the Storage mock in stats and fault plans. */
export const STORAGE_ROUTES = {
  bucketCreate: "storage.bucket.create",
  bucketList: "storage.bucket.list",
  bucketGet: "storage.bucket.get",
  bucketDelete: "storage.bucket.delete",
  bucketEmpty: "storage.bucket.empty",
  upload: "storage.object.upload",
  update: "storage.object.update",
  download: "storage.object.download",
  head: "storage.object.head",
  info: "storage.object.info",
  sign: "storage.object.sign",
  signedDownload: "storage.object.signed-download",
  uploadSign: "storage.object.upload-sign",
  signedUpload: "storage.object.signed-upload",
  list: "storage.object.list",
  remove: "storage.object.remove",
  move: "storage.object.move",
  copy: "storage.object.copy",
} as const;

/** Options of the Storage mock. */
export interface StorageMockOptions {
  /** HS256 secret for API keys and signed URLs (`SUPABASE_JWT_SECRET`). */
  jwtSecret: string;
}

/** A storage client error: HTTP 400 (or `httpStatus`) with the logical status in the body. */
export function storageError(statusCode: string, code: string, error: string, message: string, httpStatus = 400): Response {
  return json({ statusCode, code, error, message }, httpStatus);
}

const noSuchKey = () => storageError("404", "NoSuchKey", "not_found", "Object not found");
const noSuchBucket = () => storageError("404", "NoSuchBucket", "Bucket not found", "Bucket not found");
const duplicate = (code: string) => storageError("409", code, "Duplicate", "The resource already exists");
const accessDenied = (message: string) => storageError("403", "AccessDenied", "Unauthorized", message);
const invalidRequest = (message: string) => storageError("400", "InvalidRequest", "Bad Request", message);

function decodeParam(value: unknown): string {
  const raw = Array.isArray(value) ? value.join("/") : String(value ?? "");
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

function errorResponse(fault: number | string): Response {
  if (fault === 502 || fault === 504) return gatewayPage(fault);
  // The server sends every error but a 500 as HTTP 400 with the logical status in the body.
  if (fault === 429) return storageError("429", "SlowDown", "too_many_requests", "Too many requests, please slow down");
  if (fault === 503) return storageError("503", "LockTimeout", "Service Unavailable", "Resource is locked, please try again");
  return storageError("500", "InternalError", "internal", "Internal Server Error", 500);
}

async function readJson(request: Request): Promise<Record<string, unknown>> {
  try {
    const v: unknown = await request.json();
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

function objectHeaders(o: StoredObject): Record<string, string> {
  return {
    "content-type": o.contentType,
    "cache-control": o.cacheControl,
    etag: o.etag,
    "last-modified": new Date(o.updatedAt).toUTCString(),
    "content-length": String(o.bytes.byteLength),
  };
}

function download(o: StoredObject, request: Request): Response {
  const headers = objectHeaders(o);
  if (request.headers.get("if-none-match") === o.etag) return new Response(null, { status: 304, headers });
  return new Response(request.method === "HEAD" ? null : o.bytes.slice(), { status: 200, headers });
}

/** Builds the Storage handlers over `state`. */
export function createStorageHandlers(ctx: MockContext, state: StorageState, options: StorageMockOptions) {
  const nowSeconds = () => Math.floor(ctx.now() / 1000);
  const base = "*/storage/v1";

  /** Verifies the bearer JWT (or the `apikey` header); answers the denial when it is bad. */
  async function authorize(request: Request): Promise<Response | undefined> {
    const auth = request.headers.get("authorization");
    const token = auth ? /^Bearer\s+(.+)$/i.exec(auth)?.[1] : request.headers.get("apikey");
    if (!token) return accessDenied("headers must have required property 'authorization'");
    const verified = await verifyToken(options.jwtSecret, token.trim(), nowSeconds());
    if (!verified.ok) return accessDenied(verified.message);
    if (typeof verified.payload.role !== "string") return accessDenied("Invalid JWT: no role claim");
    return undefined;
  }

  type Resolver = (info: { request: Request; params: Record<string, unknown> }, decision: FaultDecision) => Promise<Response>;
  const route = (id: string, resolver: Resolver, auth = true) =>
    faulted({ ctx, service: "storage", route: id, errorResponse }, async (info, decision) => {
      if (auth) {
        const denied = await authorize(info.request);
        if (denied) return denied;
      }
      return resolver(info, decision);
    });

  const bucketOf = (params: Record<string, unknown>): StoredBucket | undefined => state.buckets.get(decodeParam(params.bucket));

  /** Reads an upload body: raw bytes with headers, or multipart with the file in any part. */
  async function readUpload(
    request: Request,
  ): Promise<{ bytes: Uint8Array; contentType: string; cacheControl: string; userMetadata: Record<string, unknown> | null } | Response> {
    const type = request.headers.get("content-type") ?? "";
    const parseMeta = (text: string | null): Record<string, unknown> | null => {
      if (!text) return null;
      try {
        return JSON.parse(text) as Record<string, unknown>;
      } catch {
        return null;
      }
    };
    if (type.startsWith("multipart/form-data")) {
      let form: FormData;
      try {
        form = await request.formData();
      } catch {
        return invalidRequest("Invalid multipart body");
      }
      let file: File | undefined;
      form.forEach((value) => {
        if (!file && typeof value !== "string") file = value;
      });
      if (!file) return invalidRequest("No file found in request");
      const cache = form.get("cacheControl");
      const meta = form.get("metadata");
      return {
        bytes: new Uint8Array(await file.arrayBuffer()),
        contentType: file.type || "application/octet-stream",
        cacheControl: `max-age=${typeof cache === "string" ? cache : "3600"}`,
        userMetadata: parseMeta(typeof meta === "string" ? meta : null),
      };
    }
    const xMeta = request.headers.get("x-metadata");
    return {
      bytes: new Uint8Array(await request.arrayBuffer()),
      contentType: type || "application/octet-stream",
      cacheControl: request.headers.get("cache-control") ?? "no-cache",
      userMetadata: parseMeta(xMeta ? Buffer.from(xMeta, "base64").toString("utf8") : null),
    };
  }

  /** Stores an upload after the bucket's limits and the upsert rule. */
  async function store(request: Request, bucket: StoredBucket, name: string, upsert: boolean): Promise<StoredObject | Response> {
    if (!name || name.endsWith("/")) return storageError("400", "InvalidKey", "Invalid Key", `Invalid key: ${name}`);
    const upload = await readUpload(request);
    if (upload instanceof Response) return upload;
    if (!upsert && bucket.objects.has(name)) return duplicate("KeyAlreadyExists");
    if (bucket.fileSizeLimit !== null && upload.bytes.byteLength > bucket.fileSizeLimit) {
      return storageError("413", "EntityTooLarge", "Payload too large", "The object exceeded the maximum allowed size");
    }
    if (
      bucket.allowedMimeTypes &&
      !bucket.allowedMimeTypes.some(
        (m) => m === upload.contentType.split(";")[0]?.trim() || (m.endsWith("/*") && upload.contentType.startsWith(m.slice(0, -1))),
      )
    ) {
      return storageError("415", "InvalidMimeType", "invalid_mime_type", `mime type ${upload.contentType} is not supported`);
    }
    return state.put(bucket, name, upload.bytes, upload);
  }

  /**
   * Verifies a signed-URL token as the server's `verifyObjectSignature` does: signature, the
   * scope it was issued for (an upload token carries `upsert`, so one without `scope` but with
   * `upsert` is a legacy upload token), then the object it names.
   */
  async function checkUrlToken(request: Request, expectedUrl: string, scope: "upload" | "download"): Promise<Response | Record<string, unknown>> {
    const token = new URL(request.url).searchParams.get("token");
    if (!token) return invalidRequest("querystring must have required property 'token'");
    const verified = await verifyToken(options.jwtSecret, token, nowSeconds());
    if (!verified.ok) return storageError("400", "InvalidJWT", "InvalidJWT", verified.message);
    const claims = verified.payload as Record<string, unknown>;
    const scoped = claims.scope === scope || (claims.scope === undefined && "upsert" in claims === (scope === "upload"));
    if (!scoped) return storageError("400", "InvalidSignature", "InvalidSignature", `Token is not scoped for ${scope}`);
    if (claims.url !== expectedUrl) return storageError("400", "InvalidSignature", "InvalidSignature", "Invalid signature");
    return claims;
  }

  function bucketJson(b: StoredBucket) {
    return {
      id: b.id,
      name: b.name,
      owner: "",
      public: b.public,
      type: "STANDARD",
      file_size_limit: b.fileSizeLimit,
      allowed_mime_types: b.allowedMimeTypes,
      created_at: b.createdAt,
      updated_at: b.updatedAt,
    };
  }

  function objectRow(o: StoredObject) {
    return {
      bucket_id: o.bucket,
      name: o.name,
      owner: "",
      owner_id: "",
      version: o.version,
      id: o.id,
      updated_at: o.updatedAt,
      created_at: o.createdAt,
      last_accessed_at: o.updatedAt,
      metadata: fileMetadata(o),
      user_metadata: o.userMetadata,
    };
  }

  const R = STORAGE_ROUTES;
  return [
    // Buckets.
    http.post(
      `${base}/bucket`,
      route(R.bucketCreate, async ({ request }) => {
        const body = await readJson(request);
        const name = typeof body.name === "string" ? body.name : typeof body.id === "string" ? body.id : "";
        if (!/^[A-Za-z0-9_.-]{1,63}$/.test(name)) return storageError("400", "InvalidBucketName", "Invalid Input", "Bucket name invalid");
        if (state.buckets.has(name)) return duplicate("BucketAlreadyExists");
        state.createBucket({
          name,
          public: body.public === true,
          fileSizeLimit: typeof body.file_size_limit === "number" ? body.file_size_limit : null,
          allowedMimeTypes: Array.isArray(body.allowed_mime_types) ? (body.allowed_mime_types as string[]) : null,
        });
        return json({ name });
      }),
    ),
    http.get(
      `${base}/bucket`,
      route(R.bucketList, async () => json([...state.buckets.values()].map(bucketJson))),
    ),
    http.get(
      `${base}/bucket/:bucket`,
      route(R.bucketGet, async ({ params }) => {
        const bucket = bucketOf(params);
        return bucket ? json(bucketJson(bucket)) : noSuchBucket();
      }),
    ),
    http.post(
      `${base}/bucket/:bucket/empty`,
      route(R.bucketEmpty, async ({ params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        bucket.objects.clear();
        return json({ message: "Successfully emptied" });
      }),
    ),
    http.delete(
      `${base}/bucket/:bucket`,
      route(R.bucketDelete, async ({ params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        if (bucket.objects.size > 0) return storageError("409", "InvalidRequest", "Bucket not empty", "The bucket you tried to delete is not empty");
        state.buckets.delete(bucket.name);
        return json({ message: "Successfully deleted" });
      }),
    ),

    // Signed URLs (before the generic object routes, which would also match).
    http.post(
      `${base}/object/sign/:bucket/:path+`,
      route(R.sign, async ({ request, params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const name = decodeParam(params.path);
        if (!bucket.objects.has(name)) return noSuchKey();
        const body = await readJson(request);
        const expiresIn = typeof body.expiresIn === "number" ? Math.floor(body.expiresIn) : NaN;
        if (!(expiresIn >= 1)) return invalidRequest("body/expiresIn must be >= 1");
        const url = `${bucket.name}/${name}`;
        const token = await signUrlToken(options.jwtSecret, { url, scope: "download" }, expiresIn, nowSeconds());
        return json({ signedURL: `/object/sign/${url}?token=${token}` });
      }),
    ),
    http.get(
      `${base}/object/sign/:bucket/:path+`,
      route(
        R.signedDownload,
        async ({ request, params }) => {
          const bucketName = decodeParam(params.bucket);
          const name = decodeParam(params.path);
          const checked = await checkUrlToken(request, `${bucketName}/${name}`, "download");
          if (checked instanceof Response) return checked;
          const object = state.buckets.get(bucketName)?.objects.get(name);
          return object ? download(object, request) : noSuchKey();
        },
        false,
      ),
    ),
    http.post(
      `${base}/object/upload/sign/:bucket/:path+`,
      route(R.uploadSign, async ({ request, params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const name = decodeParam(params.path);
        const upsert = request.headers.get("x-upsert") === "true";
        if (!upsert && bucket.objects.has(name)) return duplicate("KeyAlreadyExists");
        const url = `${bucket.name}/${name}`;
        const token = await signUrlToken(options.jwtSecret, { url, upsert, scope: "upload" }, 7200, nowSeconds());
        return json({ url: `/object/upload/sign/${url}?token=${token}`, token });
      }),
    ),
    http.put(
      `${base}/object/upload/sign/:bucket/:path+`,
      route(
        R.signedUpload,
        async ({ request, params }) => {
          const bucketName = decodeParam(params.bucket);
          const name = decodeParam(params.path);
          const claims = await checkUrlToken(request, `${bucketName}/${name}`, "upload");
          if (claims instanceof Response) return claims;
          const bucket = state.buckets.get(bucketName);
          if (!bucket) return noSuchBucket();
          // Upsert comes from the signed token only: storage-js sends `x-upsert` on this request too,
          // and the server ignores it, so whoever holds a non-upsert URL cannot overwrite the object.
          const stored = await store(request, bucket, name, claims.upsert === true);
          if (stored instanceof Response) return stored;
          return json({ Key: `${bucket.name}/${stored.name}` });
        },
        false,
      ),
    ),

    // Listing, info, move/copy, bulk delete.
    http.post(
      `${base}/object/list/:bucket`,
      route(R.list, async ({ request, params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const body = await readJson(request);
        const limit = typeof body.limit === "number" ? body.limit : 100;
        const offset = typeof body.offset === "number" ? body.offset : 0;
        const search = typeof body.search === "string" ? body.search.toLowerCase() : "";
        const sortBy = (body.sortBy ?? {}) as { column?: string; order?: string };
        let prefix = typeof body.prefix === "string" ? body.prefix.replace(/^\/+/, "") : "";
        if (prefix && !prefix.endsWith("/")) prefix += "/";
        const folders = new Set<string>();
        const files: StoredObject[] = [];
        for (const o of bucket.objects.values()) {
          if (!o.name.startsWith(prefix)) continue;
          const rest = o.name.slice(prefix.length);
          const slash = rest.indexOf("/");
          const entry = slash === -1 ? rest : rest.slice(0, slash);
          if (search && !entry.toLowerCase().startsWith(search)) continue;
          if (slash === -1) files.push(o);
          else folders.add(entry);
        }
        type Row = { name: string; object?: StoredObject };
        const rows: Row[] = [...[...folders].map((name) => ({ name })), ...files.map((o) => ({ name: o.name.slice(prefix.length), object: o }))];
        const column = sortBy.column ?? "name";
        const key = (r: Row): string => (column === "name" || !r.object ? r.name : column === "created_at" ? r.object.createdAt : r.object.updatedAt);
        rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
        if (sortBy.order === "desc") rows.reverse();
        return json(
          rows.slice(offset, offset + limit).map((r) =>
            r.object
              ? {
                  name: r.name,
                  id: r.object.id,
                  updated_at: r.object.updatedAt,
                  created_at: r.object.createdAt,
                  last_accessed_at: r.object.updatedAt,
                  metadata: fileMetadata(r.object),
                }
              : { name: r.name, id: null, updated_at: null, created_at: null, last_accessed_at: null, metadata: null },
          ),
        );
      }),
    ),
    http.get(
      `${base}/object/info/:bucket/:path+`,
      route(R.info, async ({ params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const o = bucket.objects.get(decodeParam(params.path));
        if (!o) return noSuchKey();
        return json({
          id: o.id,
          version: o.version,
          name: o.name,
          bucket_id: o.bucket,
          size: o.bytes.byteLength,
          content_type: o.contentType,
          cache_control: o.cacheControl,
          content_encoding: null,
          etag: o.etag,
          metadata: o.userMetadata,
          last_modified: o.updatedAt,
          created_at: o.createdAt,
        });
      }),
    ),
    http.post(
      `${base}/object/move`,
      route(R.move, async ({ request }) => moveOrCopy(request, true)),
    ),
    http.post(
      `${base}/object/copy`,
      route(R.copy, async ({ request }) => moveOrCopy(request, false)),
    ),
    http.get(
      `${base}/object/public/:bucket/:path+`,
      route(
        R.download,
        async ({ request, params }) => {
          const bucket = bucketOf(params);
          const o = bucket?.public ? bucket.objects.get(decodeParam(params.path)) : undefined;
          return o ? download(o, request) : bucket ? noSuchKey() : noSuchBucket();
        },
        false,
      ),
    ),
    http.get(
      `${base}/object/authenticated/:bucket/:path+`,
      route(R.download, async ({ request, params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const o = bucket.objects.get(decodeParam(params.path));
        return o ? download(o, request) : noSuchKey();
      }),
    ),
    http.delete(
      `${base}/object/:bucket`,
      route(R.remove, async ({ request, params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const body = await readJson(request);
        const prefixes = body.prefixes;
        if (!Array.isArray(prefixes) || !prefixes.every((p) => typeof p === "string")) {
          return invalidRequest("body must have required property 'prefixes'");
        }
        if (prefixes.length === 0 || prefixes.length > 1000) {
          return invalidRequest("body/prefixes must NOT have more than 1000 items and NOT have fewer than 1 items");
        }
        const deleted: StoredObject[] = [];
        for (const p of prefixes as string[]) {
          const name = p.replace(/^\/+/, "");
          const o = bucket.objects.get(name);
          if (o && bucket.objects.delete(name)) deleted.push(o);
        }
        return json(deleted.map(objectRow));
      }),
    ),

    // Single objects.
    http.head(
      `${base}/object/:bucket/:path+`,
      route(R.head, async ({ request, params }) => {
        const bucket = bucketOf(params);
        const o = bucket?.objects.get(decodeParam(params.path));
        return o ? download(o, request) : new Response(null, { status: 400 });
      }),
    ),
    http.get(
      `${base}/object/:bucket/:path+`,
      route(R.download, async ({ request, params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const o = bucket.objects.get(decodeParam(params.path));
        return o ? download(o, request) : noSuchKey();
      }),
    ),
    http.post(
      `${base}/object/:bucket/:path+`,
      route(R.upload, async ({ request, params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const stored = await store(request, bucket, decodeParam(params.path), request.headers.get("x-upsert") === "true");
        if (stored instanceof Response) return stored;
        return json({ Id: stored.id, Key: `${bucket.name}/${stored.name}` });
      }),
    ),
    http.put(
      `${base}/object/:bucket/:path+`,
      route(R.update, async ({ request, params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        // PUT creates a missing object (the server upserts on update).
        const stored = await store(request, bucket, decodeParam(params.path), true);
        if (stored instanceof Response) return stored;
        return json({ Id: stored.id, Key: `${bucket.name}/${stored.name}` });
      }),
    ),
    http.delete(
      `${base}/object/:bucket/:path+`,
      route(R.remove, async ({ params }) => {
        const bucket = bucketOf(params);
        if (!bucket) return noSuchBucket();
        const name = decodeParam(params.path);
        if (!bucket.objects.delete(name)) return noSuchKey();
        return json({ message: "Successfully deleted" });
      }),
    ),
  ];

  async function moveOrCopy(request: Request, move: boolean): Promise<Response> {
    const body = await readJson(request);
    const from = state.buckets.get(String(body.bucketId ?? ""));
    const to = state.buckets.get(String(body.destinationBucket ?? body.bucketId ?? ""));
    if (!from || !to) return noSuchBucket();
    const source = from.objects.get(String(body.sourceKey ?? ""));
    if (!source) return noSuchKey();
    const destination = String(body.destinationKey ?? "");
    if (!destination) return invalidRequest("body must have required property 'destinationKey'");
    if (to.objects.has(destination)) return duplicate("KeyAlreadyExists");
    const copy = state.put(to, destination, source.bytes, source);
    if (move) {
      from.objects.delete(source.name);
      return json({ message: "Successfully moved" });
    }
    return json({ Id: copy.id, Key: `${to.name}/${copy.name}` });
  }
}
