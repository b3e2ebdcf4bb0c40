/**
 * POST /upload (direct multipart and signed URL) and POST /upload/{id}/finalize: idempotent
 * per user and bytes, limits from configuration, the raw object where the pipeline expects it.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { documentId, jobId, sha256 } from "../../src/ids.ts";
import { useTestApp, bearer, multipartBody, serviceBearer, snapshot } from "./helpers.ts";

const ctx = useTestApp();

async function upload(userId: string, file: Parameters<typeof multipartBody>[0], fields: Parameters<typeof multipartBody>[1] = {}, fieldName?: string) {
  const { payload, headers } = multipartBody(file, fields, fieldName);
  return ctx.t.app.inject({ method: "POST", url: "/upload", payload, headers: { ...headers, ...(await bearer(userId)) } });
}

async function expectUnchanged(fn: () => Promise<{ statusCode: number; body: string }>, status: number, code: string) {
  const before = await snapshot(ctx.db.pool);
  const objects = ctx.t.store.objects.size;
  const res = await fn();
  expect(res.statusCode, res.body).toBe(status);
  expect(JSON.parse(res.body).error.code).toBe(code);
  expect(await snapshot(ctx.db.pool)).toEqual(before);
  expect(ctx.t.store.objects.size).toBe(objects);
  return JSON.parse(res.body).error.message as string;
}

describe("POST /upload (multipart)", () => {
  it("stores the file at {user_id}/raw/{document_id}/{filename} and creates the job in uploaded: 201", async () => {
    const user = randomUUID();
    const content = `%PDF-1.7 ${randomUUID()}`;
    const res = await upload(user, { name: "report.pdf", type: "application/pdf", content });
    expect(res.statusCode, res.body).toBe(201);
    const doc = documentId(user, sha256(content));
    expect(res.json()).toMatchObject({
      document_id: doc,
      job_id: jobId(doc),
      status: "uploaded",
      filename: "report.pdf",
      mime: "application/pdf",
      bytes: Buffer.byteLength(content),
      sha256: sha256(content),
      raw_path: `${user}/raw/${doc}/report.pdf`,
    });
    expect(new TextDecoder().decode(ctx.t.store.objects.get(`${user}/raw/${doc}/report.pdf`)!.bytes)).toBe(content);
    const { rows: docs } = await ctx.db.pool.query(
      "SELECT user_id, filename, mime, bytes, file_sha256, raw_path FROM upload_pipeline.documents WHERE document_id = $1",
      [doc],
    );
    expect(docs[0]).toEqual({
      user_id: user,
      filename: "report.pdf",
      mime: "application/pdf",
      bytes: String(Buffer.byteLength(content)),
      file_sha256: sha256(content),
      raw_path: `${user}/raw/${doc}/report.pdf`,
    });
    const { rows: events } = await ctx.db.pool.query("SELECT from_status, to_status FROM upload_pipeline.job_events WHERE job_id = $1", [jobId(doc)]);
    expect(events).toEqual([{ from_status: null, to_status: "uploaded" }]);
  });

  it("is idempotent: the same user and bytes give the same document and job (200), with no second write", async () => {
    const user = randomUUID();
    const content = `same bytes ${randomUUID()}`;
    const first = await upload(user, { name: "a.txt", type: "text/plain", content });
    expect(first.statusCode).toBe(201);
    const uploads = ctx.t.store.uploads;
    const before = await snapshot(ctx.db.pool);
    const second = await upload(user, { name: "renamed.txt", type: "text/plain", content });
    expect(second.statusCode).toBe(200);
    expect(second.json().document_id).toBe(first.json().document_id);
    expect(second.json().job_id).toBe(first.json().job_id);
    expect(ctx.t.store.uploads).toBe(uploads);
    expect(await snapshot(ctx.db.pool)).toEqual(before);
    // Another user with the same bytes gets their own document.
    const other = await upload(randomUUID(), { name: "a.txt", type: "text/plain", content });
    expect(other.statusCode).toBe(201);
    expect(other.json().document_id).not.toBe(first.json().document_id);
  });

  it("concurrent identical uploads make one document and one job", async () => {
    const user = randomUUID();
    const content = `race ${randomUUID()}`;
    const answers = await Promise.all(Array.from({ length: 6 }, () => upload(user, { name: "r.md", type: "text/markdown", content })));
    expect(answers.map((a) => a.statusCode).sort()).toEqual([200, 200, 200, 200, 200, 201]);
    const doc = documentId(user, sha256(content));
    expect((await ctx.db.pool.query("SELECT count(*) FROM upload_pipeline.job_events WHERE job_id = $1", [jobId(doc)])).rows[0].count).toBe("1");
  });

  it("checks an optional sha256 field against the bytes", async () => {
    const user = randomUUID();
    const content = `checked ${randomUUID()}`;
    const msg = await expectUnchanged(() => upload(user, { name: "c.txt", type: "text/plain", content }, { sha256: "0".repeat(64) }), 400, "checksum_mismatch");
    expect(msg).toContain("sha256");
    const ok = await upload(user, { name: "c.txt", type: "text/plain", content }, { sha256: sha256(content).toUpperCase() });
    expect(ok.statusCode).toBe(201);
  });

  it("takes the filename field over the part's name", async () => {
    const res = await upload(randomUUID(), { name: "blob", type: "text/plain", content: randomUUID() }, { filename: "notes.txt" });
    expect(res.json().filename).toBe("notes.txt");
    expect(res.json().raw_path).toMatch(/\/notes\.txt$/);
  });

  it("keeps a hostile file name as data and sanitises it in the storage key", async () => {
    // busboy already drops directories from the part's file name...
    const part = await upload(randomUUID(), { name: "../../etc/pass wd;rm -rf.pdf", type: "application/pdf", content: `%PDF-1.7 ${randomUUID()}` });
    expect(part.statusCode).toBe(201);
    expect(part.json().raw_path).toMatch(/^[0-9a-f-]{36}\/raw\/[0-9a-f-]{36}\/pass_wd_rm_-rf\.pdf$/);
    // ...and the filename field goes through our own sanitiser.
    const field = await upload(
      randomUUID(),
      { name: "x.pdf", type: "application/pdf", content: `%PDF-1.7 ${randomUUID()}` },
      { filename: "..\\..\\évil 'name'.pdf" },
    );
    expect(field.statusCode).toBe(201);
    expect(field.json().filename).toBe("..\\..\\évil 'name'.pdf");
    expect(field.json().raw_path).toMatch(/\/raw\/[0-9a-f-]{36}\/evil_name_\.pdf$/);
    const dots = await upload(randomUUID(), { name: "x.pdf", type: "application/pdf", content: `%PDF-1.7 ${randomUUID()}` }, { filename: ".." });
    expect(dots.json().raw_path).toMatch(/\/file$/);
  });

  it("refuses a file over UPLOAD_MAX_BYTES with 413 naming the limit", async () => {
    const msg = await expectUnchanged(
      () => upload(randomUUID(), { name: "big.pdf", type: "application/pdf", content: "x".repeat(5000) }),
      413,
      "file_too_large",
    );
    expect(msg).toContain("4096 bytes (UPLOAD_MAX_BYTES)");
  });

  it("refuses a MIME type not in UPLOAD_ALLOWED_MIME with 415 listing the allowed ones", async () => {
    const msg = await expectUnchanged(() => upload(randomUUID(), { name: "x.exe", type: "application/x-msdownload", content: "MZ" }), 415, "unsupported_mime");
    expect(msg).toContain("application/pdf, text/plain, text/markdown");
  });

  it("accepts a MIME type with parameters", async () => {
    const res = await upload(randomUUID(), { name: "u.txt", type: "text/plain; charset=utf-8", content: randomUUID() });
    expect(res.statusCode).toBe(201);
    expect(res.json().mime).toBe("text/plain");
  });

  it("refuses a missing file, an empty file, a misnamed part and unknown fields with 400", async () => {
    await expectUnchanged(() => upload(randomUUID(), null, { filename: "x.pdf" }), 400, "missing_file");
    await expectUnchanged(() => upload(randomUUID(), { name: "e.pdf", type: "application/pdf", content: "" }), 400, "empty_file");
    await expectUnchanged(() => upload(randomUUID(), { name: "e.pdf", type: "application/pdf", content: "x" }, {}, "document"), 400, "unknown_field");
    await expectUnchanged(() => upload(randomUUID(), { name: "e.pdf", type: "application/pdf", content: "x" }, { owner: "me" }), 400, "unknown_field");
    await expectUnchanged(() => upload(randomUUID(), { name: "bad\u0001name.pdf", type: "application/pdf", content: "x" }), 400, "invalid_request");
  });

  it("refuses a second file part and a repeated field with 400 saying what one upload takes", async () => {
    const md = (name: string) => ({ name, type: "text/markdown", content: `# ${name}\n\ntext\n` });
    const twoFiles = await expectUnchanged(() => upload(randomUUID(), [md("a.md"), md("b.md")]), 400, "too_many_files");
    expect(twoFiles).toContain("exactly one file part named 'file'");
    const hash = sha256(Buffer.from(md("c.md").content));
    const twice = await expectUnchanged(
      () =>
        upload(randomUUID(), md("c.md"), [
          ["sha256", hash],
          ["sha256", hash],
        ]),
      400,
      "duplicate_field",
    );
    expect(twice).toContain("'sha256' is sent twice");
  });

  it("refuses other content types with 415", async () => {
    const res = await ctx.t.app.inject({
      method: "POST",
      url: "/upload",
      payload: "hello",
      headers: { "content-type": "text/plain", ...(await bearer(randomUUID())) },
    });
    expect(res.statusCode).toBe(415);
    expect(res.json().error.message).toContain("multipart/form-data");
  });

  it("a service-role token without a sub cannot upload (403): uploads belong to a user", async () => {
    const { payload, headers } = multipartBody({ name: "s.pdf", type: "application/pdf", content: "x" });
    const res = await ctx.t.app.inject({ method: "POST", url: "/upload", payload, headers: { ...headers, ...(await serviceBearer()) } });
    expect(res.statusCode).toBe(403);
    expect(res.json().error.code).toBe("user_required");
  });
});

describe("POST /upload (signed URL) and finalize", () => {
  const request = async (user: string, body: unknown) =>
    ctx.t.app.inject({
      method: "POST",
      url: "/upload",
      payload: JSON.stringify(body),
      headers: { "content-type": "application/json", ...(await bearer(user)) },
    });

  it("creates the document, hands out a signed upload URL, and finalize creates the job once the object exists", async () => {
    const user = randomUUID();
    const content = `%PDF-1.7 signed ${randomUUID()}`;
    const body = { filename: "paper.pdf", mime: "application/pdf", bytes: content.length, sha256: sha256(content) };
    const doc = documentId(user, sha256(content));
    const path = `${user}/raw/${doc}/paper.pdf`;

    const first = await request(user, body);
    expect(first.statusCode, first.body).toBe(201);
    expect(first.json()).toMatchObject({
      document_id: doc,
      job_id: jobId(doc),
      status: null,
      upload: { path, token: expect.any(String), signed_url: expect.stringContaining(path) },
    });
    const again = await request(user, body);
    expect(again.statusCode).toBe(200);
    expect(again.json().document_id).toBe(doc);
    expect((await ctx.db.pool.query("SELECT count(*) FROM upload_pipeline.upload_jobs WHERE document_id = $1", [doc])).rows[0].count).toBe("0");

    const finalize = async (u = user) => ctx.t.app.inject({ method: "POST", url: `/upload/${doc}/finalize`, headers: await bearer(u) });
    const early = await finalize();
    expect(early.statusCode).toBe(409);
    expect(early.json().error.code).toBe("upload_missing");
    expect(early.json().error.message).toContain(path);

    ctx.t.store.put(path, content);
    expect((await finalize(randomUUID())).statusCode).toBe(404); // not theirs
    const done = await finalize();
    expect(done.statusCode).toBe(201);
    expect(done.json()).toEqual({ document_id: doc, job_id: jobId(doc), status: "uploaded" });
    const twice = await finalize();
    expect(twice.statusCode).toBe(200);
    // Asking again once the job exists: nothing to upload.
    const after = await request(user, body);
    expect(after.statusCode).toBe(200);
    expect(after.json()).toMatchObject({ document_id: doc, status: "uploaded", upload: null });
  });

  it("finalize racing another finalize that removed the object: 409 upload_missing, nothing written", async () => {
    const user = randomUUID();
    const content = `%PDF-1.7 raced ${randomUUID()}`;
    const body = { filename: "r.pdf", mime: "application/pdf", bytes: content.length, sha256: sha256(content) };
    const signed = await request(user, body);
    const doc = signed.json().document_id as string;
    ctx.t.store.put(signed.json().upload.path, content);
    const store = ctx.t.store;
    const download = store.download.bind(store);
    // info() saw the object; by the time it is read, someone else removed it.
    store.download = async (path: string) => {
      store.objects.delete(path);
      return download(path);
    };
    try {
      const before = await snapshot(ctx.db.pool);
      const res = await ctx.t.app.inject({ method: "POST", url: `/upload/${doc}/finalize`, headers: await bearer(user) });
      expect(res.statusCode, res.body).toBe(409);
      expect(res.json().error.code).toBe("upload_missing");
      expect(await snapshot(ctx.db.pool)).toEqual(before);
    } finally {
      store.download = download;
    }
  });

  it("validates the request: 400 naming the field, 413 and 415 naming the limit", async () => {
    const user = randomUUID();
    const good = { filename: "a.pdf", mime: "application/pdf", bytes: 10, sha256: sha256("a") };
    expect(await expectUnchanged(() => request(user, { ...good, sha256: "nope" }), 400, "invalid_request")).toContain("sha256");
    expect(await expectUnchanged(() => request(user, { ...good, bytes: "ten" }), 400, "invalid_request")).toContain("bytes");
    expect(await expectUnchanged(() => request(user, { ...good, filename: "" }), 400, "invalid_request")).toContain("filename");
    expect(await expectUnchanged(() => request(user, { mime: "application/pdf" }), 400, "invalid_request")).toContain("filename");
    expect(await expectUnchanged(() => request(user, { ...good, bytes: 4097 }), 413, "file_too_large")).toContain("4096");
    expect(await expectUnchanged(() => request(user, { ...good, mime: "image/png" }), 415, "unsupported_mime")).toContain("image/png");
    await expectUnchanged(
      async () =>
        ctx.t.app.inject({ method: "POST", url: "/upload", payload: "{oops", headers: { "content-type": "application/json", ...(await bearer(user)) } }),
      400,
      "invalid_json",
    );
  });

  it("finalize of an unknown or malformed id: 404 / 400", async () => {
    const headers = await bearer(randomUUID());
    expect((await ctx.t.app.inject({ method: "POST", url: `/upload/${randomUUID()}/finalize`, headers })).statusCode).toBe(404);
    const bad = await ctx.t.app.inject({ method: "POST", url: "/upload/not-a-uuid/finalize", headers });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.message).toContain("document_id");
  });
});
