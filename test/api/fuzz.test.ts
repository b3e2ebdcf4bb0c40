/**
 * Property: whatever arrives at the webhook or the upload routes, the API never answers 5xx,
 * and a refused request (4xx) leaves documents, jobs, events and webhook_log exactly as they
 * were. Runs: PROP_RUNS (default 60 per property). A failure prints fast-check's seed and path;
 * replay with `fc.assert(..., { seed, path })`.
 */
import { createHash, randomUUID } from "node:crypto";
import type { InjectOptions } from "fastify";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createTestDatabase,
  bearer,
  makeApp,
  multipartBody,
  parseEvent,
  seedJob,
  snapshot,
  webhookRequest,
  type SeededJob,
  type TestApp,
  type TestDatabase,
} from "./helpers.ts";

const RUNS = Number(process.env.PROP_RUNS ?? 60);

let db: TestDatabase;
let t: TestApp;
let job: SeededJob;
beforeAll(async () => {
  db = await createTestDatabase();
  t = await makeApp(db.pool);
  job = await seedJob(db.pool);
});
afterAll(async () => {
  await t.app.close();
  await db.drop();
});

type Inject = InjectOptions;

async function check(request: Inject): Promise<void> {
  const before = await snapshot(db.pool);
  const res = await t.app.inject(request);
  expect(res.statusCode, res.body).toBeLessThan(500);
  expect(() => JSON.parse(res.body)).not.toThrow();
  if (res.statusCode >= 400) {
    expect(res.json()).toEqual({ error: { code: expect.any(String), message: expect.any(String) } });
    expect(await snapshot(db.pool)).toEqual(before);
  }
}

const text = fc.oneof(fc.string(), fc.string({ unit: "binary" }), fc.constantFrom("", "\u0000", "'; DROP TABLE x; --", "../..", "𝕏", "\r\n"));
const eventType = fc.oneof(fc.constantFrom("parse.success", "parse.error", "parse.partial_success", "parse.cancelled", "parse.pending", "parse.running"), text);
const timestamp = fc.oneof(
  fc.double({ noNaN: false }),
  fc.integer().map((d) => Date.now() / 1000 + d / 1000),
  fc.constant(Date.now() / 1000),
  text,
  fc.constant(null),
);

describe("webhook fuzz", () => {
  it("arbitrary events, signed or not, any content type: never 5xx, never a change on refusal", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record(
          {
            event_id: fc.oneof(text, fc.uuid()),
            event_type: eventType,
            timestamp,
            data: fc.oneof(
              fc.record({ id: fc.oneof(text, fc.constant(job.parseJobId)), job_id: fc.oneof(text, fc.constant(job.parseJobId)) }, { requiredKeys: [] }),
              fc.jsonValue(),
            ),
            extra: fc.jsonValue(),
          },
          { requiredKeys: [] },
        ),
        fc.constantFrom("valid", "none", "wrong", "garbage"),
        fc.constantFrom("application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", "APPLICATION/JSON"),
        async (body, signature, contentType) => {
          const sig = signature === "valid" ? undefined : signature === "none" ? null : signature === "wrong" ? `sha256=${"0".repeat(64)}` : "sha256=not-hex";
          await check(webhookRequest(body, job.secret, { signature: sig, contentType }));
        },
      ),
      { numRuns: RUNS },
    );
  });

  it("arbitrary bytes and JSON values as the body: never 5xx, never a change", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ maxLength: 6000 }).map((b) => Buffer.from(b).toString("latin1")),
          fc.jsonValue().map((v) => JSON.stringify(v) ?? ""),
        ),
        async (raw) => {
          await check(webhookRequest(raw, job.secret));
        },
      ),
      { numRuns: RUNS },
    );
  });

  it("a genuine event with one field mutated: never 5xx", async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom("event_id", "event_type", "timestamp", "data"), fc.jsonValue(), async (field, value) => {
        await check(webhookRequest(parseEvent(job.parseJobId, { [field]: value }), job.secret));
      }),
      { numRuns: RUNS },
    );
  });
});

describe("upload fuzz", () => {
  it("arbitrary signed-upload requests: never 5xx, never a change on refusal", async () => {
    const headers = { "content-type": "application/json", ...(await bearer(randomUUID())) };
    await fc.assert(
      fc.asyncProperty(
        fc.record(
          {
            filename: fc.oneof(text, fc.jsonValue()),
            mime: fc.oneof(fc.constantFrom("application/pdf", "text/plain", "image/png"), text, fc.jsonValue()),
            bytes: fc.oneof(fc.integer(), fc.double(), fc.constant(4096), fc.constant(4097), text),
            sha256: fc.oneof(fc.stringMatching(/^[0-9a-f]{64}$/), text),
          },
          { requiredKeys: [] },
        ),
        async (body) => {
          await check({ method: "POST", url: "/upload", payload: JSON.stringify(body), headers });
        },
      ),
      { numRuns: RUNS },
    );
  });

  it("arbitrary multipart uploads: never 5xx, never a change on refusal", async () => {
    const auth = await bearer(randomUUID());
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          name: fc.oneof(fc.string({ maxLength: 80 }), fc.constantFrom("a.pdf", "", "..", "x\u0000.pdf", "ü.txt")),
          type: fc.oneof(fc.constantFrom("application/pdf", "text/plain", "text/markdown; charset=utf-8", "image/png", ""), fc.string({ maxLength: 40 })),
          content: fc.uint8Array({ maxLength: 5000 }),
        }),
        fc.dictionary(fc.constantFrom("filename", "sha256", "other"), fc.string({ maxLength: 100 }), { maxKeys: 3 }),
        fc.constantFrom("file", "document"),
        async (file, fields, fieldName) => {
          const { payload, headers } = multipartBody(file, fields, fieldName);
          await check({ method: "POST", url: "/upload", payload, headers: { ...headers, ...auth } });
        },
      ),
      { numRuns: RUNS },
    );
  });

  it("truncated or garbled multipart bodies: never 5xx", async () => {
    const auth = await bearer(randomUUID());
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.uint8Array({ maxLength: 200 }), async (cut, noise) => {
        const { payload, headers } = multipartBody({ name: "t.pdf", type: "application/pdf", content: "hello world" });
        const body = Buffer.concat([payload.subarray(0, cut % payload.length), Buffer.from(noise)]);
        await check({ method: "POST", url: "/upload", payload: body, headers: { ...headers, ...auth } });
      }),
      { numRuns: RUNS },
    );
  });
});

describe("finalize matrix", () => {
  const ELF = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]), Buffer.alloc(56, 0)]);
  const mutations = ["same", "extra_bytes", "truncated", "flipped_byte", "other_type", "over_limit"] as const;
  const mutate = (bytes: Buffer, how: (typeof mutations)[number], mime: string): Buffer => {
    switch (how) {
      case "same":
        return bytes;
      case "extra_bytes":
        return Buffer.concat([bytes, Buffer.from(" more")]);
      case "truncated":
        return bytes.subarray(0, bytes.length - 1);
      case "flipped_byte":
        return Buffer.concat([bytes.subarray(0, -1), Buffer.from([bytes.at(-1)! ^ 0x01])]);
      case "other_type":
        return mime === "application/pdf" ? Buffer.from(`# not a pdf\n${"x".repeat(bytes.length)}`) : ELF;
      case "over_limit":
        return Buffer.concat([bytes, Buffer.alloc(4097, 0x20)]);
    }
  };

  it("finalize creates the job exactly when the stored object is the declared file; every refusal writes nothing and removes the object", async () => {
    const auth = await bearer(randomUUID());
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom("application/pdf", "text/markdown", "text/plain"),
        fc.string({ minLength: 1, maxLength: 200 }),
        fc.constantFrom(...mutations),
        fc.constantFrom("declared", "text/plain", "application/pdf", "application/x-msdownload", "application/octet-stream"),
        async (mime, text, mutation, putTypeChoice) => {
          const declared = Buffer.from(mime === "application/pdf" ? `%PDF-1.7\n${text}\n%%EOF\n` : `# ${text}\n`);
          const body = {
            filename: mime === "application/pdf" ? "d.pdf" : "d.md",
            mime,
            bytes: declared.length,
            sha256: createHash("sha256").update(declared).digest("hex"),
          };
          const signed = await t.app.inject({
            method: "POST",
            url: "/upload",
            payload: JSON.stringify(body),
            headers: { "content-type": "application/json", ...auth },
          });
          if (signed.statusCode === 200 && signed.json().upload === null) return; // this file already ran to a job
          expect(signed.statusCode, signed.body).toBeLessThan(300);
          const { document_id: docId, upload } = signed.json() as { document_id: string; upload: { path: string } };
          const putType = putTypeChoice === "declared" ? mime : putTypeChoice;
          t.store.put(upload.path, mutate(declared, mutation, mime), putType);

          const before = await snapshot(db.pool);
          const res = await t.app.inject({ method: "POST", url: `/upload/${docId}/finalize`, headers: auth });
          expect(res.statusCode, res.body).toBeLessThan(500);
          const typeFits = putType === mime || (mime.startsWith("text/") && putType.startsWith("text/"));
          if (mutation === "same" && typeFits) {
            expect(res.statusCode, res.body).toBe(201);
            expect(Buffer.from(t.store.objects.get(upload.path)!.bytes).equals(declared)).toBe(true);
          } else {
            expect(res.statusCode, `${mutation} as ${putType}: ${res.body}`).toBeGreaterThanOrEqual(400);
            expect(res.json()).toEqual({ error: { code: expect.any(String), message: expect.any(String) } });
            expect(await snapshot(db.pool)).toEqual(before);
            expect(t.store.objects.has(upload.path)).toBe(false);
          }
        },
      ),
      { numRuns: RUNS },
    );
  });
});
