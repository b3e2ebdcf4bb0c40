/**
 * The storage wrapper against small handlers that answer like Supabase Storage (SPEC §7): paths
 * under /storage/v1, `{Id, Key}` on upload, every client error as HTTP 400 with the logical
 * status in the body.
 */
import { http, HttpResponse } from "msw";
import { setupServer } from "msw/node";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createStorageClient, type ObjectStorage } from "../../src/clients/storage.ts";
import { rejectionOf } from "../support/errors.ts";

const SUPABASE_URL = "http://supabase.test";
const BASE = `${SUPABASE_URL}/storage/v1`;
const KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
const BUCKET = "documents";

const objects = new Map<string, { bytes: Uint8Array; contentType: string }>();
const requests: Array<{ method: string; path: string; headers: Headers }> = [];

const storageError = (statusCode: string, code: string, error: string, message: string) =>
  HttpResponse.json({ statusCode, code, error, message }, { status: 400 });
const notFound = () => storageError("404", "NoSuchKey", "not_found", "Object not found");

/** `/storage/v1/object/documents/u/raw/a.pdf` → `documents/u/raw/a.pdf` */
function keyOf(url: string, prefix: string): string {
  return decodeURIComponent(new URL(url).pathname.slice(`/storage/v1/${prefix}`.length));
}

const handlers = [
  http.all(`${BASE}/*`, ({ request }) => {
    requests.push({ method: request.method, path: new URL(request.url).pathname, headers: request.headers });
    if (request.headers.get("authorization") !== `Bearer ${KEY}`) {
      return storageError("403", "AccessDenied", "Unauthorized", "invalid signature");
    }
    return undefined; // fall through to the route handlers
  }),
  http.get(`${BASE}/object/info/*`, ({ request }) => {
    const key = keyOf(request.url, "object/info/");
    if (!key.startsWith(`${BUCKET}/`)) return storageError("404", "NoSuchBucket", "Bucket not found", "Bucket not found");
    const obj = objects.get(key);
    if (!obj) return notFound();
    return HttpResponse.json({
      id: "00000000-0000-4000-8000-000000000001",
      name: key.slice(BUCKET.length + 1),
      size: obj.bytes.length,
      content_type: obj.contentType,
    });
  }),
  http.post(`${BASE}/object/upload/sign/*`, ({ request }) => {
    const key = keyOf(request.url, "object/upload/sign/");
    return HttpResponse.json({ url: `/object/upload/sign/${key}?token=signed-token-123`, token: "signed-token-123" });
  }),
  http.post(`${BASE}/object/*`, async ({ request }) => {
    const key = keyOf(request.url, "object/");
    if (objects.has(key) && request.headers.get("x-upsert") !== "true") {
      return storageError("409", "KeyAlreadyExists", "Duplicate", "The resource already exists");
    }
    const bytes = new Uint8Array(await request.arrayBuffer());
    objects.set(key, { bytes, contentType: request.headers.get("content-type") ?? "" });
    return HttpResponse.json({ Id: "00000000-0000-4000-8000-000000000002", Key: key });
  }),
  http.get(`${BASE}/object/*`, ({ request }) => {
    const obj = objects.get(keyOf(request.url, "object/"));
    if (!obj) return notFound();
    return new HttpResponse(obj.bytes, { headers: { "content-type": obj.contentType } });
  }),
  http.delete(`${BASE}/object/:bucket`, async ({ request, params }) => {
    const { prefixes } = (await request.json()) as { prefixes: string[] };
    const deleted = prefixes.filter((p) => objects.delete(`${String(params.bucket)}/${p}`)).map((name) => ({ name, bucket_id: params.bucket }));
    return HttpResponse.json(deleted);
  }),
];

const server = setupServer(...handlers);
beforeAll(() => server.listen({ onUnhandledFrame: "error" }));
beforeEach(() => {
  objects.clear();
  requests.length = 0;
});
afterEach(() => server.resetHandlers());
afterAll(() => server.close());

const storage = (key = KEY): ObjectStorage => createStorageClient({ supabaseUrl: `${SUPABASE_URL}/`, serviceRoleKey: key, bucket: BUCKET });

const text = (s: string) => new TextEncoder().encode(s);

describe("upload and download", () => {
  it("uploads raw bytes with the content type, x-upsert and the service-role key as bearer and apikey", async () => {
    const result = await storage().upload("u1/raw/doc.md", text("# Title\n"), "text/markdown", { upsert: false });
    expect(result).toEqual({ path: "u1/raw/doc.md", fullPath: "documents/u1/raw/doc.md" });
    const req = requests.find((r) => r.method === "POST")!;
    expect(req.path).toBe("/storage/v1/object/documents/u1/raw/doc.md");
    expect(req.headers.get("x-upsert")).toBe("false");
    expect(req.headers.get("content-type")).toBe("text/markdown");
    expect(req.headers.get("apikey")).toBe(KEY);
    expect(objects.get("documents/u1/raw/doc.md")?.bytes).toEqual(text("# Title\n"));
  });

  it("uploads a web stream without buffering it first", async () => {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(text("part one, "));
        c.enqueue(text("part two"));
        c.close();
      },
    });
    await storage().upload("u1/parsed/d.md", body, "text/markdown", { upsert: true });
    expect(new TextDecoder().decode(objects.get("documents/u1/parsed/d.md")!.bytes)).toBe("part one, part two");
  });

  it("upsert: true overwrites; upsert: false on an existing key is a permanent storage_already_exists", async () => {
    await storage().upload("k.md", "v1", "text/markdown");
    await storage().upload("k.md", "v2", "text/markdown", { upsert: true });
    expect(new TextDecoder().decode(objects.get("documents/k.md")!.bytes)).toBe("v2");
    const err = await rejectionOf(storage().upload("k.md", "v3", "text/markdown"));
    expect(err).toMatchObject({ code: "storage_already_exists", errorClass: "permanent", status: 409 });
  });

  it("download streams the object as a web ReadableStream", async () => {
    await storage().upload("big.bin", new Uint8Array(256 * 1024).fill(7), "application/octet-stream");
    const stream = await storage().download("big.bin");
    expect(stream).toBeInstanceOf(ReadableStream);
    let total = 0;
    for await (const chunk of stream) total += chunk.length;
    expect(total).toBe(256 * 1024);
  });

  it("downloadBytes returns the whole object", async () => {
    await storage().upload("a.md", "hello", "text/markdown");
    expect(new TextDecoder().decode(await storage().downloadBytes("a.md"))).toBe("hello");
  });

  it("a missing object is a permanent storage_not_found, raised before any stream is handed out", async () => {
    const err = await rejectionOf(storage().download("nope.md"));
    expect(err).toMatchObject({ code: "storage_not_found", errorClass: "permanent", status: 404 });
    expect(err.message).toContain("NoSuchKey");
  });

  it("an error while reading the body (a reset mid-transfer) surfaces as a transient PipelineError from the stream", async () => {
    // msw ends an errored mock body cleanly, so the reset is simulated one level down, with the
    // client's injectable fetch answering a body that fails after a few chunks.
    let pulls = 0;
    const resetting: typeof fetch = async () =>
      new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            if (pulls++ < 3) c.enqueue(text("some bytes "));
            else c.error(Object.assign(new TypeError("terminated"), { cause: Object.assign(new Error("other side closed"), { code: "UND_ERR_SOCKET" }) }));
          },
        }),
        { status: 200 },
      );
    const client = createStorageClient({ supabaseUrl: SUPABASE_URL, serviceRoleKey: KEY, bucket: BUCKET, fetch: resetting });
    const stream = await client.download("broken.bin");
    const err = await rejectionOf(new Response(stream).arrayBuffer());
    expect(err).toMatchObject({ code: "storage_connection", errorClass: "transient" });
    expect(pulls).toBeGreaterThan(3);
  });
});

describe("info, signed upload URL, remove", () => {
  it("info gives a stored object's size and content type, and null for a missing one", async () => {
    await storage().upload("here.md", "xyz", "text/markdown");
    await expect(storage().info("here.md")).resolves.toEqual({ size: 3, contentType: "text/markdown" });
    await expect(storage().info("gone.md")).resolves.toBeNull();
    expect(requests.some((r) => r.path === "/storage/v1/object/info/documents/here.md")).toBe(true);
  });

  it("info throws, rather than answering null, for a bad key", async () => {
    const err = await rejectionOf(storage("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.d3JvbmctZmFrZS1zaWc").info("here.md"));
    expect(err).toMatchObject({ code: "storage_unauthorized", errorClass: "permanent", status: 403 });
  });

  it("createSignedUploadUrl returns the absolute URL and its token", async () => {
    const signed = await storage().createSignedUploadUrl("u1/raw/doc.pdf", { upsert: true });
    expect(signed.token).toBe("signed-token-123");
    expect(signed.path).toBe("u1/raw/doc.pdf");
    expect(signed.signedUrl).toBe(`${BASE}/object/upload/sign/documents/u1/raw/doc.pdf?token=signed-token-123`);
    expect(requests.at(-1)?.headers.get("x-upsert")).toBe("true");
  });

  it("remove returns the names actually deleted; missing ones are not an error", async () => {
    await storage().upload("a.md", "a", "text/markdown");
    await expect(storage().remove(["a.md", "missing.md"])).resolves.toEqual(["a.md"]);
    await expect(storage().remove([])).resolves.toEqual([]);
  });
});

describe("error mapping", () => {
  it("403 AccessDenied (bad JWT) → permanent storage_unauthorized, key not in the message", async () => {
    const wrongKey = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.d3JvbmctZmFrZS1zaWc";
    const err = await rejectionOf(storage(wrongKey).upload("x.md", "x", "text/markdown"));
    expect(err).toMatchObject({ code: "storage_unauthorized", errorClass: "permanent" });
    expect(err.message).not.toContain(wrongKey);
  });

  it("404 NoSuchBucket → permanent storage_bucket_not_found", async () => {
    const other = createStorageClient({ supabaseUrl: SUPABASE_URL, serviceRoleKey: KEY, bucket: "nobucket" });
    expect(await rejectionOf(other.info("a.md"))).toMatchObject({ code: "storage_bucket_not_found", errorClass: "permanent" });
  });

  it.each([500, 503])("HTTP %i → transient storage_unavailable", async (status) => {
    server.use(
      http.post(`${BASE}/object/*`, () => HttpResponse.json({ statusCode: String(status), error: "internal", message: "Internal Server Error" }, { status })),
    );
    expect(await rejectionOf(storage().upload("x.md", "x", "text/markdown"))).toMatchObject({ code: "storage_unavailable", errorClass: "transient", status });
  });

  it("a 5xx with a non-JSON body → transient", async () => {
    server.use(http.get(`${BASE}/object/*`, () => new HttpResponse("<html>Bad gateway</html>", { status: 502 })));
    expect(await rejectionOf(storage().download("x.md"))).toMatchObject({ code: "storage_unavailable", errorClass: "transient", status: 502 });
  });

  it("logical 429 → transient storage_rate_limited", async () => {
    server.use(http.post(`${BASE}/object/*`, () => storageError("429", "SlowDown", "too_many_requests", "Too many requests")));
    expect(await rejectionOf(storage().upload("x.md", "x", "text/markdown"))).toMatchObject({ code: "storage_rate_limited", errorClass: "transient" });
  });

  it("other client errors → permanent storage_bad_request", async () => {
    server.use(http.post(`${BASE}/object/*`, () => storageError("400", "InvalidKey", "invalid_key", "Invalid key: a//b")));
    expect(await rejectionOf(storage().upload("x.md", "x", "text/markdown"))).toMatchObject({ code: "storage_bad_request", errorClass: "permanent" });
  });

  it("a network failure → transient storage_connection", async () => {
    server.use(http.get(`${BASE}/object/*`, () => HttpResponse.error()));
    expect(await rejectionOf(storage().download("x.md"))).toMatchObject({ code: "storage_connection", errorClass: "transient" });
  });

  it("the caller's abort → transient aborted", async () => {
    const ac = new AbortController();
    ac.abort();
    expect(await rejectionOf(storage().download("x.md", ac.signal))).toMatchObject({ code: "aborted", errorClass: "transient" });
  });
});
