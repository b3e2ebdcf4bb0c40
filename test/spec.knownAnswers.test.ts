/**
 * SPEC's literal values, pinned. Every expected value here is a literal computed outside this
 * code base (Python's `uuid.uuid5`, `hashlib.sha256`, `hmac`, `struct.pack("<f")`), never from
 * the constants the code uses: a test that derives its expectation from `ID_NAMESPACE` would
 * pass with any namespace. A one-line change to a namespace, an id formula, a hash, the webhook
 * signature scheme, a price, a default or an edge of the state machine fails here.
 */
import { describe, expect, it } from "vitest";
import { signWebhook as mockSignWebhook } from "../mocks/index.ts";
import { signWebhook, WEBHOOK_TOLERANCE_SECONDS } from "../src/api/routes/webhook.ts";
import { CHUNKER_NAME, CHUNKER_VERSION } from "../src/chunking/markdownChunker.ts";
import { costUsd } from "../src/clients/tokens.ts";
import { configForLocalMocks } from "../src/config.ts";
import { chunkId, documentId, ID_NAMESPACE, jobId, sha256, vectorSha } from "../src/ids.ts";
import { ALL_STATES, EDGES, FAILURE_OF, NEXT_STATE } from "../src/state-machine/table.ts";

const USER = "0b8e4c53-8f3a-4e8f-9a55-2f3c6a7d1e90";
/** sha256("hello world\n") */
const FILE_SHA = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447";
/** uuid5(UUID("6c8a1e6e-1f0b-4aa8-9f0a-1a7c2e6f2b42"), f"{USER}:{FILE_SHA}") */
const DOC = "b110e720-b419-5646-a68d-83d51bc3bddc";

describe("deterministic ids (SPEC §3)", () => {
  it("the UUIDv5 namespace is SPEC's", () => {
    expect(ID_NAMESPACE).toBe("6c8a1e6e-1f0b-4aa8-9f0a-1a7c2e6f2b42");
  });

  it("file_sha256 and chunk_sha are hex SHA-256 of the bytes (UTF-8 for text)", () => {
    expect(sha256("hello world\n")).toBe(FILE_SHA);
    expect(sha256(new TextEncoder().encode("hello world\n"))).toBe(FILE_SHA);
    expect(sha256("Größe — ü\n")).toBe("1006ea2059d9985f83500b7a650b2cb2197a5ad42d5506afec26da625e780a66");
  });

  it("document_id = uuidv5(ns, '{user_id}:{file_sha256}'), lower-cased", () => {
    expect(documentId(USER, FILE_SHA)).toBe(DOC);
    expect(documentId(USER.toUpperCase(), FILE_SHA.toUpperCase())).toBe(DOC);
  });

  it("job_id = uuidv5(ns, '{document_id}:job')", () => {
    expect(jobId(DOC)).toBe("41077454-74bc-5375-9c83-048a036a2d03");
  });

  it("chunk_id = uuidv5(ns, '{document_id}:{chunker_name}:{chunker_version}:{chunk_ord}')", () => {
    // The chunker's identity is part of every chunk id: changing it without meaning to would
    // orphan every stored chunk.
    expect([CHUNKER_NAME, CHUNKER_VERSION]).toEqual(["md-heading-token", "1.0.0"]);
    expect(chunkId(DOC, CHUNKER_NAME, CHUNKER_VERSION, 0)).toBe("a3ed8c1f-6cb3-58b0-bd77-2b863e12c709");
    expect(chunkId(DOC, CHUNKER_NAME, CHUNKER_VERSION, 7)).toBe("efb6ed42-f815-5f12-b12e-f89bbf20d90e");
  });

  it("vector_sha = SHA-256 of the float32 little-endian bytes, -0 distinct from +0", () => {
    // hashlib.sha256(struct.pack("<4f", 1.0, -0.0, 0.5, -2.25))
    const expected = "15ac0b13ecc43083ec9eeeb82ad84e5b4256025fb5bb7bd5026cdee93eb73e7b";
    expect(vectorSha(Float32Array.of(1, -0, 0.5, -2.25))).toBe(expected);
    expect(vectorSha([1, -0, 0.5, -2.25])).toBe(expected);
    expect(vectorSha([1, 0, 0.5, -2.25])).toBe("64e5eb8f52a54d9cdcaa87e13487a0f69f2a87d6d8635b4b00a64d57e0555b7f");
  });
});

describe("the LlamaParse webhook signature (SPEC §6)", () => {
  const body = '{"event_id":"evt_1","event_type":"parse.success","timestamp":1767225600.5,"data":{"job_id":"pjb_1"}}';
  // hmac.new(b"whsec_5f2b", body, hashlib.sha256).hexdigest()
  const expected = "sha256=6155414c91064e274039a371b281f1e64ede04bd014fa1b3df87b9f7cc7ba67c";

  it("LC-Signature is sha256=<hex HMAC-SHA256(raw body)>, in the API and in the mock that sends it", () => {
    expect(signWebhook("whsec_5f2b", body)).toBe(expected);
    expect(mockSignWebhook("whsec_5f2b", body)).toBe(expected);
  });

  it("the timestamp window is ±5 minutes", () => {
    expect(WEBHOOK_TOLERANCE_SECONDS).toBe(300);
  });
});

describe("prices and defaults", () => {
  it("embedding list prices per 1M tokens", () => {
    expect(costUsd("text-embedding-3-small", 1_000_000)).toBeCloseTo(0.02, 12);
    expect(costUsd("text-embedding-3-large", 1_000_000)).toBeCloseTo(0.13, 12);
    expect(costUsd("text-embedding-ada-002", 1_000_000)).toBeCloseTo(0.1, 12);
  });

  it("the configuration defaults are the README's table", () => {
    const c = configForLocalMocks("http://mocks.test");
    expect({
      EMBED_MODEL: c.EMBED_MODEL,
      EMBED_BATCH_SIZE: c.EMBED_BATCH_SIZE,
      OPENAI_RPM: c.OPENAI_RPM,
      OPENAI_TPM: c.OPENAI_TPM,
      CHUNK_MAX_TOKENS: c.CHUNK_MAX_TOKENS,
      CHUNK_OVERLAP_TOKENS: c.CHUNK_OVERLAP_TOKENS,
      WORKER_CONCURRENCY: c.WORKER_CONCURRENCY,
      LEASE_SECONDS: c.LEASE_SECONDS,
      MAX_ATTEMPTS: c.MAX_ATTEMPTS,
      RETRY_BASE_MS: c.RETRY_BASE_MS,
      RETRY_MAX_MS: c.RETRY_MAX_MS,
      POLL_INTERVAL_MS: c.POLL_INTERVAL_MS,
      WEBHOOK_DEADLINE_SECONDS: c.WEBHOOK_DEADLINE_SECONDS,
      SHUTDOWN_TIMEOUT_MS: c.SHUTDOWN_TIMEOUT_MS,
      WEBHOOK_MAX_BYTES: c.WEBHOOK_MAX_BYTES,
      UPLOAD_MAX_BYTES: c.UPLOAD_MAX_BYTES,
      STORAGE_BUCKET: c.STORAGE_BUCKET,
    }).toEqual({
      EMBED_MODEL: "text-embedding-3-small",
      EMBED_BATCH_SIZE: 256,
      OPENAI_RPM: 3000,
      OPENAI_TPM: 1000000,
      CHUNK_MAX_TOKENS: 512,
      CHUNK_OVERLAP_TOKENS: 64,
      WORKER_CONCURRENCY: 4,
      LEASE_SECONDS: 60,
      MAX_ATTEMPTS: 5,
      RETRY_BASE_MS: 1000,
      RETRY_MAX_MS: 300000,
      POLL_INTERVAL_MS: 2000,
      WEBHOOK_DEADLINE_SECONDS: 30,
      SHUTDOWN_TIMEOUT_MS: 30000,
      WEBHOOK_MAX_BYTES: 65536,
      UPLOAD_MAX_BYTES: 52428800,
      STORAGE_BUCKET: "documents",
    });
  });
});

describe("the state machine is SPEC §4's, edge for edge", () => {
  // Written out by hand from SPEC §4 (the table in code is generated; a test generated from it
  // would accept any edge added to or dropped from it), plus issue 14's two create edges: a model
  // migration's job for a document starts where that profile's work begins.
  const expected = [
    "∅ → uploaded by api (create)",
    "∅ → chunks_stored by operator,worker (create)",
    "∅ → parse_validated by operator,worker (create)",
    "uploaded → parse_queued by worker (forward)",
    "parse_queued → parsed by reconciler,webhook (forward)",
    "parsed → parse_validated by worker (forward)",
    "parse_validated → chunking by worker (forward)",
    "chunking → chunks_stored by worker (forward)",
    "chunks_stored → embedding_queued by worker (forward)",
    "embedding_queued → embedding_in_progress by worker (forward)",
    "embedding_in_progress → embeddings_stored by worker (forward)",
    "embeddings_stored → complete by worker (forward)",
    "uploaded → failed_parse by worker (failure)",
    "parse_queued → failed_parse by reconciler,webhook,worker (failure)",
    "parsed → failed_parse by worker (failure)",
    "parse_validated → failed_chunking by worker (failure)",
    "chunking → failed_chunking by worker (failure)",
    "chunks_stored → failed_embedding by worker (failure)",
    "embedding_queued → failed_embedding by worker (failure)",
    "embedding_in_progress → failed_embedding by worker (failure)",
    "embeddings_stored → failed_embedding by worker (failure)",
    // SPEC §3 says "back to the last successful state"; a failed parse goes back to `uploaded`
    // only, because retrying re-parses (issue 17 item 4; README design notes).
    "failed_parse → uploaded by operator (retry)",
    "failed_chunking → parse_validated by operator (retry)",
    "failed_chunking → chunking by operator (retry)",
    "failed_embedding → chunks_stored by operator (retry)",
    "failed_embedding → embedding_queued by operator (retry)",
    "failed_embedding → embedding_in_progress by operator (retry)",
    "failed_embedding → embeddings_stored by operator (retry)",
  ];

  it("has exactly these 28 edges, actors and kinds", () => {
    const actual = EDGES.map((e) => `${e.from ?? "∅"} → ${e.to} by ${[...e.actors].sort().join(",")} (${e.kind})`);
    expect([...actual].sort()).toEqual([...expected].sort());
  });

  it("has these 13 states, forward successors and failure states", () => {
    expect([...ALL_STATES]).toEqual([
      "uploaded",
      "parse_queued",
      "parsed",
      "parse_validated",
      "chunking",
      "chunks_stored",
      "embedding_queued",
      "embedding_in_progress",
      "embeddings_stored",
      "complete",
      "failed_parse",
      "failed_chunking",
      "failed_embedding",
    ]);
    expect(NEXT_STATE).toEqual({
      uploaded: "parse_queued",
      parse_queued: "parsed",
      parsed: "parse_validated",
      parse_validated: "chunking",
      chunking: "chunks_stored",
      chunks_stored: "embedding_queued",
      embedding_queued: "embedding_in_progress",
      embedding_in_progress: "embeddings_stored",
      embeddings_stored: "complete",
    });
    expect(Object.keys(FAILURE_OF)).toHaveLength(9);
  });
});
