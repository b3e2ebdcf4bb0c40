/**
 * Determinism of what the pipeline derives: ids (SPEC §3), `vector_sha` across the trip through
 * Postgres `real[]`, and embeddings as the worker's own client receives them from the mock.
 * Normalization, the chunker and the mock's embedding function have their own properties in
 * test/text, test/chunking and test/mocks; these cover what lies between them and the database.
 */
import { createHash } from "node:crypto";
import fc from "fast-check";
import { setupServer, type SetupServer } from "msw/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { configForLocalMocks } from "../../src/config.ts";
import { chunkId, documentId, ID_NAMESPACE, jobId, vectorSha } from "../../src/ids.ts";
import { createPipelineServices, type WiredServices } from "../../src/services.ts";
import { float4ArrayFromSend, float4ArrayParam } from "../../src/db/float4Array.ts";
import { createMocks, expectedEmbedding, signServiceRoleKey, type Mocks } from "../../mocks/index.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { checkProperty } from "./settings.ts";
import { v5 as uuidv5 } from "uuid";

const FILE = "test/property/determinism.test.ts";
const UUID_V5 = /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

const uuid = fc.uuid();
const hex64 = fc.stringMatching(/^[0-9a-f]{64}$/);
/** Chunker names and versions as the code spells them: no colon, which separates the parts. */
const name = fc.stringMatching(/^[a-z][a-z0-9-]{0,15}$/);
const version = fc.tuple(fc.nat(20), fc.nat(20), fc.nat(20)).map(([a, b, c]) => `${a}.${b}.${c}`);
const ord = fc.nat(100_000);

describe("ids", () => {
  // Every id is UUIDv5 (our namespace) of the lower-cased, colon-joined parts: the same inputs, in any letter case, give the same v5 id.
  it("ids are UUIDv5 of the canonical string, whatever the case", async () => {
    await checkProperty(
      fc.property(uuid, hex64, name, version, ord, (user, fileSha, chunker, ver, n) => {
        const doc = documentId(user, fileSha);
        expect(doc).toMatch(UUID_V5);
        expect(doc).toBe(uuidv5(`${user}:${fileSha}`.toLowerCase(), ID_NAMESPACE));
        expect(documentId(user.toUpperCase(), fileSha.toUpperCase())).toBe(doc);
        expect(jobId(doc)).toBe(uuidv5(`${doc}:job`, ID_NAMESPACE));
        const chunk = chunkId(doc, chunker, ver, n);
        expect(chunk).toBe(uuidv5(`${doc}:${chunker}:${ver}:${n}`.toLowerCase(), ID_NAMESPACE));
        expect(chunkId(doc.toUpperCase(), chunker.toUpperCase(), ver, n)).toBe(chunk);
        expect(chunk).toMatch(UUID_V5);
      }),
      { name: "ids are UUIDv5 of the canonical string, whatever the case", file: FILE, defaultRuns: 200 },
    );
  });

  // Distinct documents, and distinct (document, chunker, version, ord) keys, never share an id.
  it("distinct keys get distinct ids", async () => {
    await checkProperty(
      fc.property(
        fc.uniqueArray(fc.tuple(uuid, hex64), { minLength: 2, maxLength: 20, selector: ([u, h]) => `${u}:${h}` }),
        fc.uniqueArray(fc.tuple(name, version, ord), { minLength: 2, maxLength: 20, selector: (t) => t.join(":") }),
        (docs, chunks) => {
          const docIds = docs.map(([u, h]) => documentId(u, h));
          expect(new Set(docIds).size).toBe(docs.length);
          expect(new Set(docIds.map(jobId)).size).toBe(docs.length);
          const ids = docIds.slice(0, 3).flatMap((d) => chunks.map(([c, v, n]) => chunkId(d, c, v, n)));
          expect(new Set(ids).size).toBe(ids.length);
        },
      ),
      { name: "distinct keys get distinct ids", file: FILE, defaultRuns: 100 },
    );
  });
});

let db: TestDatabase;
let mocks: Mocks;
let msw: SetupServer;
let services: WiredServices;
beforeAll(async () => {
  db = await createTestDatabase();
  mocks = createMocks({ seed: 5 });
  msw = setupServer(...mocks.handlers);
  msw.listen({ onUnhandledFrame: "bypass" });
  services = createPipelineServices(
    configForLocalMocks("http://mocks.test", {
      OPENAI_API_KEY: mocks.keys.openai,
      LLAMA_CLOUD_API_KEY: mocks.keys.llamaCloud,
      SUPABASE_SERVICE_ROLE_KEY: await signServiceRoleKey(mocks.keys.jwtSecret),
      EMBED_DIMENSIONS: "64",
    }),
  );
}, 60_000);
afterAll(async () => {
  msw?.close();
  await mocks?.close();
  await db?.drop();
});

describe("vectors", () => {
  // vector_sha is SHA-256 of the little-endian float32 bytes, equal for a Float32Array and its numbers, and unchanged by the trip through Postgres real[] that the embed stage writes and the finish stage re-hashes.
  it("vector_sha survives the round trip through Postgres real arrays", async () => {
    await checkProperty(
      fc.asyncProperty(fc.float32Array({ noNaN: true, noDefaultInfinity: true, minLength: 1, maxLength: 64 }), async (v) => {
        const le = Buffer.alloc(v.length * 4);
        v.forEach((x, i) => {
          le.writeFloatLE(x, i * 4);
        });
        const sha = vectorSha(v);
        expect(sha).toBe(createHash("sha256").update(le).digest("hex"));
        expect(vectorSha(Array.from(v))).toBe(sha);
        // Written as the embed stage writes it, read back as the finish stage reads it.
        const { rows } = await db.pool.query<{ embedding: number[]; sent: Buffer }>("SELECT $1::real[] AS embedding, array_send($1::real[]) AS sent", [
          float4ArrayParam(v),
        ]);
        expect(vectorSha(rows[0]!.embedding)).toBe(sha);
        expect(vectorSha(float4ArrayFromSend(rows[0]!.sent))).toBe(sha);
      }),
      { name: "vector_sha survives the round trip through Postgres real arrays", file: FILE, defaultRuns: 100 },
    );
  });

  // Through the worker's own client (SDK base64, rate limiter, breaker), each input's vector is the mock's deterministic embedding for that text alone, in input order, whatever else is in the batch.
  it("the worker's embedder returns each text's own deterministic vector", async () => {
    const text = fc.string({ unit: "grapheme", minLength: 1, maxLength: 80 });
    await checkProperty(
      fc.asyncProperty(fc.array(text, { minLength: 1, maxLength: 12 }), async (inputs) => {
        const { vectors, usage } = await services.embedder.embed(inputs);
        expect(vectors).toHaveLength(inputs.length);
        inputs.forEach((t, i) => {
          expect(Array.from(vectors[i]!)).toEqual(Array.from(Float32Array.from(expectedEmbedding("text-embedding-3-small", t, 64))));
        });
        expect(usage.totalTokens).toBeGreaterThan(0);
        // Equal texts, equal vectors; and so equal vector_sha, the key the invariants compare.
        const again = await services.embedder.embed([...inputs].reverse());
        inputs.forEach((_, i) => {
          expect(vectorSha(again.vectors[inputs.length - 1 - i]!)).toBe(vectorSha(vectors[i]!));
        });
      }),
      { name: "the worker's embedder returns each text's own deterministic vector", file: FILE, defaultRuns: 30 },
    );
  });
});
