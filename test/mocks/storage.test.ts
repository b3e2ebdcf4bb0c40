/**
 * The Supabase Storage mock against SPEC §7: `@supabase/storage-js` unchanged over real HTTP,
 * and the raw error bodies (HTTP 400 with the logical status as a string).
 */
import { StorageApiError, StorageClient } from "@supabase/storage-js";
import { describe, expect, it } from "vitest";
import { DEFAULT_JWT_SECRET, signServiceRoleKey } from "../../mocks/index.ts";
import { startMockServer, type MockServer } from "../../mocks/server.ts";
import { useMockServer } from "../support/mockServer.ts";

let server: MockServer;
let storage: StorageClient;
const CLI_SERVICE_ROLE_KEY =
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

const clientWith = (key: string) => new StorageClient(server.urls.storage, { apikey: key, Authorization: `Bearer ${key}` });

useMockServer({}, (started) => {
  server = started;
  storage = clientWith(started.env.SUPABASE_SERVICE_ROLE_KEY!);
});

function expectApiError(error: unknown, statusCode: string, code: string): StorageApiError {
  expect(error).toBeInstanceOf(StorageApiError);
  const e = error as StorageApiError;
  expect(e.status).toBe(400);
  expect(e.statusCode).toBe(statusCode);
  expect(e.code).toBe(code);
  return e;
}

describe("keys", () => {
  it("signs the Supabase CLI's well-known service-role key for the default secret", async () => {
    expect(await signServiceRoleKey(DEFAULT_JWT_SECRET)).toBe(CLI_SERVICE_ROLE_KEY);
    expect(server.env.SUPABASE_SERVICE_ROLE_KEY).toBe(CLI_SERVICE_ROLE_KEY);
  });
});

describe("storage-js, unchanged", () => {
  it("uploads raw bytes and downloads them back", async () => {
    const files = storage.from("documents");
    const up = await files.upload("u1/raw/a.txt", "hello world", { contentType: "text/plain" });
    expect(up.error).toBeNull();
    expect(up.data).toMatchObject({ path: "u1/raw/a.txt", fullPath: "documents/u1/raw/a.txt" });
    expect(up.data!.id).toMatch(/^[0-9a-f-]{36}$/);
    const down = await files.download("u1/raw/a.txt");
    expect(down.error).toBeNull();
    expect(await down.data!.text()).toBe("hello world");
    expect(down.data!.type).toBe("text/plain");
  });

  it("uploads a Blob as multipart and keeps its type", async () => {
    const files = storage.from("documents");
    const bytes = new Uint8Array([0, 1, 2, 250]);
    expect((await files.upload("u1/raw/b.pdf", new Blob([bytes], { type: "application/pdf" }))).error).toBeNull();
    const down = await files.download("u1/raw/b.pdf");
    expect(new Uint8Array(await down.data!.arrayBuffer())).toEqual(bytes);
    expect(down.data!.type).toBe("application/pdf");
  });

  it("refuses a second upload without upsert (409 KeyAlreadyExists) and accepts it with upsert", async () => {
    const files = storage.from("documents");
    await files.upload("k.txt", "one");
    const again = await files.upload("k.txt", "two");
    const e = expectApiError(again.error, "409", "KeyAlreadyExists");
    expect(e.message).toBe("The resource already exists");
    expect((await files.upload("k.txt", "two", { upsert: true })).error).toBeNull();
    expect(await (await files.download("k.txt")).data!.text()).toBe("two");
    expect((await files.update("k.txt", "three")).error).toBeNull();
    expect(await (await files.download("k.txt")).data!.text()).toBe("three");
    // PUT on a missing key creates it, as the server does.
    expect((await files.update("made-by-put.txt", "four")).error).toBeNull();
    expect(await (await files.download("made-by-put.txt")).data!.text()).toBe("four");
  });

  it("reports a missing object as NoSuchKey and a missing bucket as NoSuchBucket", async () => {
    expectApiError((await storage.from("documents").download("nope.txt")).error, "404", "NoSuchKey");
    expectApiError((await storage.from("nobucket").upload("a.txt", "x")).error, "404", "NoSuchBucket");
  });

  it("creates a signed URL that downloads without a key", async () => {
    const files = storage.from("documents");
    await files.upload("u1/parsed/doc one.md", "# Doc", { contentType: "text/markdown" });
    const signed = await files.createSignedUrl("u1/parsed/doc one.md", 60);
    expect(signed.error).toBeNull();
    expect(signed.data!.signedUrl).toContain("/storage/v1/object/sign/documents/u1/parsed/doc%20one.md?token=");
    const res = await fetch(signed.data!.signedUrl);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("# Doc");
    const tampered = await fetch(signed.data!.signedUrl.replace("doc%20one.md", "other.md"));
    expect(tampered.status).toBe(400);
    expect(await tampered.json()).toMatchObject({ statusCode: "400", code: "InvalidSignature" });
  });

  it("creates a signed upload URL and uploads to it", async () => {
    const files = storage.from("documents");
    const signed = await files.createSignedUploadUrl("u2/raw/c.md");
    expect(signed.error).toBeNull();
    expect(signed.data!.signedUrl).toContain("/storage/v1/object/upload/sign/documents/u2/raw/c.md?token=");
    const anonymous = new StorageClient(server.urls.storage, {});
    const put = await anonymous.from("documents").uploadToSignedUrl("u2/raw/c.md", signed.data!.token, "# C", { contentType: "text/markdown" });
    expect(put.error).toBeNull();
    expect(put.data).toEqual({ path: "u2/raw/c.md", fullPath: "documents/u2/raw/c.md" });
    expect(await (await files.download("u2/raw/c.md")).data!.text()).toBe("# C");
    const wrong = await anonymous.from("documents").uploadToSignedUrl("u2/raw/d.md", signed.data!.token, "x");
    expectApiError(wrong.error, "400", "InvalidSignature");
  });

  it("takes upsert from the signed token only, as the server does: a non-upsert URL cannot overwrite, whatever x-upsert says", async () => {
    const files = storage.from("documents");
    const signed = await files.createSignedUploadUrl("u3/raw/once.md");
    const anonymous = new StorageClient(server.urls.storage, {}).from("documents");
    expect((await anonymous.uploadToSignedUrl("u3/raw/once.md", signed.data!.token, "# first", { contentType: "text/markdown" })).error).toBeNull();
    // storage-js sends `x-upsert: true` with upsert: true; the token says false.
    const again = await anonymous.uploadToSignedUrl("u3/raw/once.md", signed.data!.token, "# second", { contentType: "text/markdown", upsert: true });
    expectApiError(again.error, "409", "KeyAlreadyExists");
    expect(await (await files.download("u3/raw/once.md")).data!.text()).toBe("# first");

    const upsertUrl = await files.createSignedUploadUrl("u3/raw/many.md", { upsert: true });
    expect((await anonymous.uploadToSignedUrl("u3/raw/many.md", upsertUrl.data!.token, "# one", { upsert: false })).error).toBeNull();
    expect((await anonymous.uploadToSignedUrl("u3/raw/many.md", upsertUrl.data!.token, "# two", { upsert: false })).error).toBeNull();
    expect(await (await files.download("u3/raw/many.md")).data!.text()).toBe("# two");
  });

  it("answers the signed-upload PUT with {Key} only, and refuses a download token there", async () => {
    const files = storage.from("documents");
    const signed = await files.createSignedUploadUrl("u4/raw/k.md");
    const res = await fetch(`${server.urls.storage}${signed.data!.signedUrl.slice(signed.data!.signedUrl.indexOf("/object/"))}`, {
      method: "PUT",
      body: "# k",
      headers: { "content-type": "text/markdown", "x-upsert": "false" },
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ Key: "documents/u4/raw/k.md" });

    const download = await files.createSignedUrl("u4/raw/k.md", 60);
    const token = new URL(download.data!.signedUrl).searchParams.get("token")!;
    const replay = await new StorageClient(server.urls.storage, {}).from("documents").uploadToSignedUrl("u4/raw/k.md", token, "# overwritten");
    expectApiError(replay.error, "400", "InvalidSignature");
    expect(await (await files.download("u4/raw/k.md")).data!.text()).toBe("# k");
  });

  it("lists files and folders under a prefix, with search, limit and offset", async () => {
    const files = storage.from("documents");
    for (const p of ["u1/raw/b.txt", "u1/raw/a.txt", "u1/raw/sub/c.txt", "u1/parsed/x.md"]) await files.upload(p, p);
    const raw = await files.list("u1/raw");
    expect(raw.error).toBeNull();
    expect(raw.data!.map((f) => [f.name, f.id === null])).toEqual([
      ["a.txt", false],
      ["b.txt", false],
      ["sub", true],
    ]);
    expect(raw.data![0]!.metadata).toMatchObject({ size: "u1/raw/a.txt".length, mimetype: "text/plain;charset=UTF-8" });
    expect((await files.list("u1")).data!.map((f) => f.name)).toEqual(["parsed", "raw"]);
    expect((await files.list("u1/raw", { search: "b" })).data!.map((f) => f.name)).toEqual(["b.txt"]);
    expect((await files.list("u1/raw", { limit: 1, offset: 1 })).data!.map((f) => f.name)).toEqual(["b.txt"]);
  });

  it("removes the named objects and returns only those it deleted", async () => {
    const files = storage.from("documents");
    await files.upload("r/a.txt", "a");
    await files.upload("r/b.txt", "b");
    const removed = await files.remove(["r/a.txt", "r/missing.txt"]);
    expect(removed.error).toBeNull();
    expect(removed.data!.map((o) => o.name)).toEqual(["r/a.txt"]);
    expect((await files.remove(["r/missing.txt"])).data).toEqual([]);
    expect((await files.exists("r/a.txt")).data).toBe(false);
    expect((await files.exists("r/b.txt")).data).toBe(true);
  });

  it("answers info for an object", async () => {
    const files = storage.from("documents");
    await files.upload("i/a.md", "# A", { contentType: "text/markdown", metadata: { owner: "u1" } });
    const info = await files.info("i/a.md");
    expect(info.error).toBeNull();
    expect(info.data).toMatchObject({ name: "i/a.md", bucketId: "documents", size: 3, contentType: "text/markdown", metadata: { owner: "u1" } });
  });

  it("creates buckets, refuses duplicates", async () => {
    expect((await storage.createBucket("media")).data).toEqual({ name: "media" });
    expectApiError((await storage.createBucket("media")).error, "409", "BucketAlreadyExists");
    expect((await storage.getBucket("media")).data).toMatchObject({ id: "media", name: "media", public: false });
    expect((await storage.listBuckets()).data!.map((b) => b.name).sort()).toEqual(["documents", "media"]);
  });

  it("denies a bad JWT with 403 AccessDenied", async () => {
    const forged = await signServiceRoleKey("another-secret-that-is-at-least-32-characters");
    const e = expectApiError((await clientWith(forged).from("documents").download("a.txt")).error, "403", "AccessDenied");
    expect(e.message).toBe("invalid signature");
    const expired = await signServiceRoleKey(DEFAULT_JWT_SECRET, { expiresAt: 1_000_000 });
    expect(expectApiError((await clientWith(expired).from("documents").list()).error, "403", "AccessDenied").message).toBe("jwt expired");
  });

  it("surfaces a 500 fault as a StorageApiError with status 500", async () => {
    server.mocks.setFaults({ storage: { bursts: [{ fault: 500, start: 1, count: 1, routes: ["storage.object.download"] }] } });
    await storage.from("documents").upload("f.txt", "x");
    const down = await storage.from("documents").download("f.txt");
    expect(down.error).toBeInstanceOf(StorageApiError);
    expect((down.error as StorageApiError).status).toBe(500);
    expect((down.error as StorageApiError).code).toBe("InternalError");
    expect((await storage.from("documents").download("f.txt")).error).toBeNull();
  });
});

describe("raw wire format", () => {
  const authed = (init: RequestInit = {}): RequestInit => ({
    ...init,
    headers: { authorization: `Bearer ${server.env.SUPABASE_SERVICE_ROLE_KEY}`, ...(init.headers as Record<string, string>) },
  });

  it("answers an upload with {Id, Key} and a missing object with the 400/404 body", async () => {
    const up = await fetch(
      `${server.urls.storage}/object/documents/x/y.txt`,
      authed({ method: "POST", body: "hi", headers: { "content-type": "text/plain", "x-upsert": "false" } }),
    );
    expect(up.status).toBe(200);
    const body = (await up.json()) as { Id: string; Key: string };
    expect(body.Key).toBe("documents/x/y.txt");
    expect(typeof body.Id).toBe("string");
    const missing = await fetch(`${server.urls.storage}/object/documents/x/z.txt`, authed());
    expect(missing.status).toBe(400);
    expect(await missing.json()).toEqual({ statusCode: "404", code: "NoSuchKey", error: "not_found", message: "Object not found" });
  });

  it("answers a missing Authorization with 403 AccessDenied in a 400", async () => {
    const res = await fetch(`${server.urls.storage}/object/documents/x/z.txt`);
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ statusCode: "403", code: "AccessDenied", error: "Unauthorized" });
  });

  it("refuses more than 1000 prefixes in a delete", async () => {
    const res = await fetch(
      `${server.urls.storage}/object/documents`,
      authed({
        method: "DELETE",
        body: JSON.stringify({ prefixes: Array.from({ length: 1001 }, (_, i) => `p${i}`) }),
        headers: { "content-type": "application/json" },
      }),
    );
    expect(res.status).toBe(400);
    expect(((await res.json()) as { statusCode: string }).statusCode).toBe("400");
  });
});

describe("bucket limits given at start-up", () => {
  it("the initial bucket refuses objects over file_size_limit (413) and types outside allowed_mime_types (415), also after a reset", async () => {
    const limited = await startMockServer({ port: 0, bucketLimits: { fileSizeLimit: 8, allowedMimeTypes: ["application/pdf", "text/markdown"] } });
    try {
      const client = new StorageClient(limited.urls.storage, {
        apikey: limited.env.SUPABASE_SERVICE_ROLE_KEY!,
        Authorization: `Bearer ${limited.env.SUPABASE_SERVICE_ROLE_KEY!}`,
      });
      const bucket = await client.getBucket("documents");
      expect(bucket.data).toMatchObject({ file_size_limit: 8, allowed_mime_types: ["application/pdf", "text/markdown"] });
      const files = client.from("documents");
      expectApiError((await files.upload("a.md", "# more than eight", { contentType: "text/markdown" })).error, "413", "EntityTooLarge");
      expectApiError((await files.upload("a.exe", "MZ", { contentType: "application/x-msdownload" })).error, "415", "InvalidMimeType");
      expect((await files.upload("a.md", "# ok", { contentType: "text/markdown" })).error).toBeNull();
      limited.mocks.reset();
      expect((await client.getBucket("documents")).data).toMatchObject({ file_size_limit: 8 });
    } finally {
      await limited.close();
    }
  });
});
