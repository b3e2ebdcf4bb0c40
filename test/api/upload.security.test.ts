/**
 * Untrusted bytes on both upload paths. The signed path runs against the Storage mock over real
 * HTTP with storage-js (the mock's signed-upload PUT takes upsert from the token, as the server
 * does), so "a PUT after finalize is refused" is Storage's answer, not a stand-in's. Every
 * refusal is checked to change nothing: the database is compared before and after, and a
 * refused finalize leaves no object behind.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { StorageClient } from "@supabase/storage-js";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.ts";
import { createStorageClient, type ObjectStorage } from "../../src/clients/storage.ts";
import { configForLocalMocks } from "../../src/config.ts";
import { documentId, jobId, sha256 } from "../../src/ids.ts";
import { createLogger } from "../../src/logger.ts";
import { startMockServer, type MockServer } from "../../mocks/server.ts";
import { bearer, createTestDatabase, JWT_SECRET, multipartBody, snapshot, type TestDatabase } from "./helpers.ts";

const DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
/** The first bytes of an x86-64 ELF executable (what `file-type` needs to call it one). */
const ELF = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]), Buffer.alloc(56, 0), Buffer.from("payload")]);
const pdf = (tag: string) => Buffer.from(`%PDF-1.7\n% ${tag}\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n`);

let db: TestDatabase;
let mocks: MockServer;
let app: FastifyInstance;
let storage: ObjectStorage;
/** A client with no credentials at all: what a user holding only the signed URL has. */
let anonymous: ReturnType<StorageClient["from"]>;

beforeAll(async () => {
  db = await createTestDatabase();
  mocks = await startMockServer({ seed: 4 });
  // Shipped defaults for the limit (50 MiB) and the allowed types.
  const config = configForLocalMocks(mocks.baseUrl, { ...mocks.env, SUPABASE_JWT_SECRET: JWT_SECRET, DATABASE_URL: db.url });
  storage = createStorageClient({ supabaseUrl: mocks.baseUrl, serviceRoleKey: config.SUPABASE_SERVICE_ROLE_KEY, bucket: config.STORAGE_BUCKET });
  app = await buildApp({ pool: db.pool, config, store: storage, log: createLogger({ level: "silent" }), onParseEvent: async () => undefined });
  await app.ready();
  anonymous = new StorageClient(mocks.urls.storage, {}).from(config.STORAGE_BUCKET);
});
afterAll(async () => {
  await app?.close();
  await mocks?.close();
  await db?.drop();
});

async function sign(userId: string, body: Record<string, unknown>) {
  return app.inject({ method: "POST", url: "/upload", payload: body, headers: await bearer(userId) });
}
async function finalize(userId: string, docId: string) {
  return app.inject({ method: "POST", url: `/upload/${docId}/finalize`, headers: await bearer(userId) });
}
async function put(path: string, token: string, bytes: Uint8Array | string, contentType: string, upsert = false) {
  return anonymous.uploadToSignedUrl(path, token, bytes, { contentType, upsert });
}

/** `fn` answers `status`/`code` and leaves the database as it was. */
async function refusedWithoutTrace(fn: () => Promise<{ statusCode: number; body: string }>, status: number, code: string): Promise<string> {
  const before = await snapshot(db.pool);
  const res = await fn();
  expect(res.statusCode, res.body).toBe(status);
  const body = JSON.parse(res.body) as { error: { code: string; message: string } };
  expect(body.error.code).toBe(code);
  expect(res.body).not.toMatch(/at .*\.ts:\d+|Error:/); // no stack trace
  expect(await snapshot(db.pool)).toEqual(before);
  return body.error.message;
}

/** Sign a URL for `declared` and PUT `stored` there; returns what finalize needs. */
async function signAndPut(declared: { bytes: number; sha256: string; mime: string; filename?: string }, stored: Uint8Array | string, contentType: string) {
  const user = randomUUID();
  const res = await sign(user, { filename: declared.filename ?? "doc.pdf", mime: declared.mime, bytes: declared.bytes, sha256: declared.sha256 });
  expect(res.statusCode, res.body).toBe(201);
  const { document_id: docId, upload } = res.json() as { document_id: string; upload: { path: string; token: string } };
  const stored_ = await put(upload.path, upload.token, stored, contentType);
  expect(stored_.error).toBeNull();
  return { user, docId, path: upload.path, token: upload.token };
}

describe("signed upload: finalize checks what was stored, not what was declared", () => {
  it("declared 10 bytes, stored 60 MiB: 413 at finalize naming the limit, no job, the object removed", async () => {
    const declared = pdf("small").subarray(0, 10);
    const big = Buffer.alloc(60 * 1024 * 1024, 0x20);
    pdf("big").copy(big);
    // The signed URL is PUT with the declared bytes, then the object is swapped in the mock's
    // state for 60 MiB: what a 60 MiB PUT leaves behind, without pushing 60 MiB through HTTP on
    // a busy test machine (measured here: 7–25 s per PUT at a load average of 20).
    const { user, docId, path } = await signAndPut({ bytes: 10, sha256: sha256(declared), mime: "application/pdf" }, declared, "application/pdf");
    const bucket = mocks.state.storage.buckets.get("documents")!;
    mocks.state.storage.put(bucket, path, big, { contentType: "application/pdf", cacheControl: "no-cache", userMetadata: null });
    expect(await storage.info(path)).toMatchObject({ size: big.length });
    const message = await refusedWithoutTrace(() => finalize(user, docId), 413, "file_too_large");
    expect(message).toContain("52428800 bytes (UPLOAD_MAX_BYTES)");
    expect(await storage.info(path)).toBeNull();
    expect((await db.pool.query("SELECT count(*)::int AS n FROM upload_pipeline.upload_jobs WHERE document_id = $1", [docId])).rows[0].n).toBe(0);
  });

  it("more bytes than declared (under the limit): 413 naming 'bytes'; fewer: 400 size_mismatch; both remove the object", async () => {
    const declared = pdf(`declared ${randomUUID()}`);
    const more = await signAndPut(
      { bytes: declared.length, sha256: sha256(declared), mime: "application/pdf" },
      Buffer.concat([declared, Buffer.from("extra")]),
      "application/pdf",
    );
    expect(await refusedWithoutTrace(() => finalize(more.user, more.docId), 413, "file_too_large")).toContain("'bytes'");
    expect(await storage.info(more.path)).toBeNull();

    const fewer = await signAndPut(
      { bytes: declared.length, sha256: sha256(declared), mime: "application/pdf" },
      declared.subarray(0, declared.length - 3),
      "application/pdf",
    );
    expect(await refusedWithoutTrace(() => finalize(fewer.user, fewer.docId), 400, "size_mismatch")).toContain("bytes");
    expect(await storage.info(fewer.path)).toBeNull();
  });

  it("other bytes of the declared size: 400 checksum_mismatch, object removed; the same URL then takes the right bytes", async () => {
    const declared = pdf(`right ${randomUUID()}`);
    const wrong = Buffer.from(declared);
    wrong[wrong.length - 2] = 0x21;
    const { user, docId, path, token } = await signAndPut(
      { bytes: declared.length, sha256: sha256(declared), mime: "application/pdf" },
      wrong,
      "application/pdf",
    );
    expect(await refusedWithoutTrace(() => finalize(user, docId), 400, "checksum_mismatch")).toContain("sha256");
    expect(await storage.info(path)).toBeNull();

    expect((await put(path, token, declared, "application/pdf")).error).toBeNull();
    const done = await finalize(user, docId);
    expect(done.statusCode, done.body).toBe(201);
    expect(done.json()).toEqual({ document_id: docId, job_id: jobId(docId), status: "uploaded" });
    expect(docId).toBe(documentId(user, sha256(declared)));
  });

  it("a PUT after finalize is refused by Storage (the URL was signed without upsert), and the object stays what was checked", async () => {
    const declared = pdf(`final ${randomUUID()}`);
    const { user, docId, path, token } = await signAndPut(
      { bytes: declared.length, sha256: sha256(declared), mime: "application/pdf" },
      declared,
      "application/pdf",
    );
    expect((await finalize(user, docId)).statusCode).toBe(201);
    // storage-js sends x-upsert: true here; only the token counts.
    const overwrite = await put(path, token, ELF, "application/pdf", true);
    expect(overwrite.error).toMatchObject({ statusCode: "409", code: "KeyAlreadyExists" });
    expect(Buffer.from(await storage.downloadBytes(path))).toEqual(declared);
  });

  it("an ELF binary declared application/pdf: 415 naming both types, object removed", async () => {
    const { user, docId, path } = await signAndPut({ bytes: ELF.length, sha256: sha256(ELF), mime: "application/pdf" }, ELF, "application/pdf");
    const message = await refusedWithoutTrace(() => finalize(user, docId), 415, "content_mismatch");
    expect(message).toContain("application/pdf");
    expect(message).toContain("application/x-elf");
    expect(await storage.info(path)).toBeNull();
  });

  it("PUT with a Content-Type other than the declared one, or not allowed: 415, object removed", async () => {
    const declared = pdf(`typed ${randomUUID()}`);
    const asText = await signAndPut({ bytes: declared.length, sha256: sha256(declared), mime: "application/pdf" }, declared, "text/plain");
    expect(await refusedWithoutTrace(() => finalize(asText.user, asText.docId), 415, "content_mismatch")).toContain("Content-Type");
    expect(await storage.info(asText.path)).toBeNull();
    const asExe = await signAndPut({ bytes: declared.length, sha256: sha256(declared), mime: "application/pdf" }, declared, "application/x-msdownload");
    expect(await refusedWithoutTrace(() => finalize(asExe.user, asExe.docId), 415, "unsupported_mime")).toContain("UPLOAD_ALLOWED_MIME");
    expect(await storage.info(asExe.path)).toBeNull();
  });

  it("asking for a URL again while the object is stored: 409 already_uploaded pointing at finalize, nothing written", async () => {
    const declared = pdf(`again ${randomUUID()}`);
    const body = { filename: "doc.pdf", mime: "application/pdf", bytes: declared.length, sha256: sha256(declared) };
    const { user, docId } = await signAndPut(body, declared, "application/pdf");
    expect(await refusedWithoutTrace(() => sign(user, body), 409, "already_uploaded")).toContain(`/upload/${docId}/finalize`);
  });

  it("the URL's token is refused for any other path", async () => {
    const declared = pdf(`path ${randomUUID()}`);
    const user = randomUUID();
    const res = await sign(user, { filename: "doc.pdf", mime: "application/pdf", bytes: declared.length, sha256: sha256(declared) });
    const { upload } = res.json() as { upload: { path: string; token: string } };
    const elsewhere = await put(upload.path.replace("doc.pdf", "other.pdf"), upload.token, declared, "application/pdf");
    expect(elsewhere.error).toMatchObject({ statusCode: "400", code: "InvalidSignature" });
  });
});

describe("direct upload: content, not labels", () => {
  async function direct(file: { name: string; type: string; content: string | Uint8Array }) {
    const { payload, headers } = multipartBody(file);
    return app.inject({ method: "POST", url: "/upload", payload, headers: { ...headers, ...(await bearer(randomUUID())) } });
  }

  it("an ELF binary declared application/pdf: 415 content_mismatch naming both, nothing stored", async () => {
    const before = mocks.mocks.stats().storage;
    const message = await refusedWithoutTrace(() => direct({ name: "report.pdf", type: "application/pdf", content: ELF }), 415, "content_mismatch");
    expect(message).toContain("declared 'application/pdf'");
    expect(message).toContain("'application/x-elf'");
    expect(mocks.mocks.stats().storage).toEqual(before);
  });

  it("a DOCX is accepted as DOCX; a plain ZIP declared DOCX is 415", async () => {
    const docx = readFileSync(new URL("./fixtures/minimal.docx", import.meta.url));
    const ok = await direct({ name: "letter.docx", type: DOCX, content: docx });
    expect(ok.statusCode, ok.body).toBe(201);
    expect(ok.json().mime).toBe(DOCX);
    const zip = readFileSync(new URL("./fixtures/plain.zip", import.meta.url));
    expect(await refusedWithoutTrace(() => direct({ name: "letter.docx", type: DOCX, content: zip }), 415, "content_mismatch")).toContain("application/zip");
  });

  it("binary bytes declared as text are 415; text that is not UTF-8 is told so; HTML declared as text/html is accepted", async () => {
    expect(await refusedWithoutTrace(() => direct({ name: "notes.md", type: "text/markdown", content: ELF }), 415, "content_mismatch")).toContain(
      "text/markdown",
    );
    const utf16 = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(`# Notes ${randomUUID()}\n`, "utf16le")]);
    expect(await refusedWithoutTrace(() => direct({ name: "notes.md", type: "text/markdown", content: utf16 }), 415, "content_mismatch")).toContain(
      "not UTF-8 text",
    );
    const html = await direct({ name: "page.html", type: "text/html", content: `<!DOCTYPE html><html><body><p>${randomUUID()}</p></body></html>` });
    expect(html.statusCode, html.body).toBe(201);
  });

  it("a part without a type takes one from its extension and bytes instead of a 415 for application/octet-stream", async () => {
    const md = await direct({ name: "notes.md", type: "application/octet-stream", content: `# Notes ${randomUUID()}\n` });
    expect(md.statusCode, md.body).toBe(201);
    expect(md.json().mime).toBe("text/markdown");
    const pdfPart = await direct({ name: "scan", type: "application/octet-stream", content: pdf(randomUUID()) });
    expect(pdfPart.statusCode, pdfPart.body).toBe(201);
    expect(pdfPart.json().mime).toBe("application/pdf");
    // A part with no Content-Type header at all (busboy calls it text/plain).
    const boundary = `----raw${randomUUID().replace(/-/g, "")}`;
    const scan = pdf(randomUUID());
    const payload = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="scan.pdf"\r\n\r\n`),
      scan,
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]);
    const bare = await app.inject({
      method: "POST",
      url: "/upload",
      payload,
      headers: { "content-type": `multipart/form-data; boundary=${boundary}`, ...(await bearer(randomUUID())) },
    });
    expect(bare.statusCode, bare.body).toBe(201);
    expect(bare.json().mime).toBe("application/pdf");
    // Unlabelled bytes that are none of the allowed types: 415 naming what they are.
    expect(await refusedWithoutTrace(() => direct({ name: "tool", type: "application/octet-stream", content: ELF }), 415, "unsupported_mime")).toContain(
      "application/x-elf",
    );
  });
});
