/**
 * The invariant checker (SPEC §8.1–8.5) passes a correct finished database and names the check
 * and the row for every planted fault. Each fault is planted inside a transaction that is rolled
 * back, so every test starts from the same correct database.
 */
import { randomUUID } from "node:crypto";
import type pg from "pg";
import { describe, expect, it } from "vitest";
import { checkInvariants, CHECK_NAMES, fingerprint, type InvariantInput, type InvariantReport } from "../../harness/invariants/index.ts";
import { sha256, vectorSha } from "../../src/ids.ts";
import { EMBED, finishedDatabaseForFile } from "./finishedDatabase.ts";

const file = finishedDatabaseForFile();

/** Plant a fault in a transaction, check, roll back. */
async function planted(fault: (c: pg.PoolClient) => Promise<unknown>, input: InvariantInput = file.run.input): Promise<InvariantReport> {
  const client = await file.db.pool.connect();
  try {
    await client.query("BEGIN");
    await fault(client);
    return await checkInvariants(client, input);
  } finally {
    await client.query("ROLLBACK");
    client.release();
  }
}

/** Drop a buffer table's UNIQUE constraint (inside the test's transaction) so a duplicate can be planted. */
async function dropUnique(c: pg.PoolClient, table: string): Promise<void> {
  const { rows } = await c.query<{ conname: string }>("SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'u'", [
    `upload_pipeline.${table}`,
  ]);
  await c.query(`ALTER TABLE upload_pipeline.${table} DROP CONSTRAINT "${rows[0]!.conname}"`);
}

const failing = (r: InvariantReport) => r.checks.filter((c) => !c.ok).map((c) => c.name);
const violations = (r: InvariantReport, name: string) => r.checks.find((c) => c.name === name)!.violations.join("\n");

describe("checkInvariants on a correct finished database", () => {
  it("passes every check, in the documented order", async () => {
    const report = await checkInvariants(file.db.pool, file.run.input);
    expect(report.checks.map((c) => c.name)).toEqual([...CHECK_NAMES]);
    expect(failing(report)).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.checks.find((c) => c.name === "matches_reference_run")!.note).toMatch(/no reference/);
  });

  it("matches its own fingerprints as the reference", async () => {
    const reference = await fingerprint(file.db.pool, file.run.input.documentIds, { embed: EMBED });
    const [a] = file.run.complete;
    expect(reference.get(a!.documentId)!.chunkIds).toEqual(a!.chunkIds);
    expect(reference.get(a!.documentId)!.vectorShas).toHaveLength(3);
    expect(reference.get(file.run.poison.documentId)).toEqual({ chunkIds: [], chunkShas: [], vectorShas: [] });
    const report = await checkInvariants(file.db.pool, { ...file.run.input, reference });
    expect(report.ok).toBe(true);
  });

  it("accepts fewer job tokens than billed when a crash may have re-spent them", async () => {
    const billedMore = { promptTokensByModel: { [EMBED.model]: file.run.tokens + 40 } };
    expect((await checkInvariants(file.db.pool, { ...file.run.input, mockUsage: billedMore, crashesHappened: true })).ok).toBe(true);
  });
});

describe("planted faults are caught and named", () => {
  it("a duplicate vector row (unique constraint dropped)", async () => {
    const chunk = file.run.complete[0]!.chunkIds[1]!;
    const report = await planted(async (c) => {
      await dropUnique(c, "document_vector_buffer");
      await c.query(
        `INSERT INTO upload_pipeline.document_vector_buffer (chunk_id, embed_model, embed_version, embedding, vector_sha, batch_id)
         SELECT chunk_id, embed_model, embed_version, embedding, vector_sha, gen_random_uuid() FROM upload_pipeline.document_vector_buffer WHERE chunk_id = $1`,
        [chunk],
      );
    });
    expect(report.ok).toBe(false);
    expect(failing(report)).toContain("no_duplicate_or_missing_rows");
    expect(violations(report, "no_duplicate_or_missing_rows")).toMatch(new RegExp(`vector of chunk ${chunk}.*duplicate`));
  });

  it("a duplicate chunk ord under a different chunk id", async () => {
    const doc = file.run.complete[1]!;
    const bogus = randomUUID();
    const report = await planted(async (c) => {
      await dropUnique(c, "document_chunk_buffer");
      await c.query(
        `INSERT INTO upload_pipeline.document_chunk_buffer (chunk_id, document_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha, token_count)
         SELECT $2, document_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha, token_count FROM upload_pipeline.document_chunk_buffer WHERE chunk_id = $1`,
        [doc.chunkIds[0], bogus],
      );
    });
    expect(failing(report)).toContain("no_duplicate_or_missing_rows");
    expect(violations(report, "no_duplicate_or_missing_rows")).toContain(`document ${doc.documentId}: duplicate chunk rows for ord 0: `);
    expect(violations(report, "ids_and_hashes_deterministic")).toContain(`chunk ${bogus}`);
  });

  it("a lost chunk (a gap in the ords)", async () => {
    const doc = file.run.complete[0]!;
    const report = await planted((c) => c.query("DELETE FROM upload_pipeline.document_chunk_buffer WHERE chunk_id = $1", [doc.chunkIds[1]]));
    expect(violations(report, "no_duplicate_or_missing_rows")).toContain(`document ${doc.documentId}: chunk ords are not 0..1: missing 1`);
    expect(failing(report)).toContain("counters_match_buffers");
  });

  it("a lost job: an uploaded document with no job", async () => {
    const doc = file.run.complete[1]!;
    const report = await planted((c) => c.query("DELETE FROM upload_pipeline.upload_jobs WHERE job_id = $1", [doc.jobId]));
    expect(failing(report)).toContain("no_lost_documents");
    expect(violations(report, "no_lost_documents")).toContain(`document ${doc.documentId} was uploaded but has no upload_jobs row`);
  });

  it("a lost document: uploaded but not in the table", async () => {
    const missing = randomUUID();
    const report = await planted(async () => undefined, { ...file.run.input, documentIds: [...file.run.input.documentIds, missing] });
    expect(failing(report)).toEqual(["no_lost_documents"]);
    expect(violations(report, "no_lost_documents")).toContain(`document ${missing} was uploaded but has no documents row`);
  });

  it("a job stuck in a non-terminal state", async () => {
    const doc = file.run.complete[0]!;
    const report = await planted(async (c) => {
      await c.query("UPDATE upload_pipeline.upload_jobs SET status = 'embedding_in_progress' WHERE job_id = $1", [doc.jobId]);
      await c.query("DELETE FROM upload_pipeline.job_events WHERE id = ANY($1::bigint[])", [doc.eventIds.slice(-2)]);
    });
    expect(failing(report)).toContain("jobs_terminal_as_expected");
    expect(violations(report, "jobs_terminal_as_expected")).toContain(
      `job ${doc.jobId} (document ${doc.documentId}) is stuck in non-terminal state embedding_in_progress`,
    );
  });

  it("a job in a terminal state other than expected", async () => {
    const expected = new Map(file.run.input.expected);
    expected.set(file.run.complete[1]!.documentId, "failed_embedding");
    const report = await planted(async () => undefined, { ...file.run.input, expected });
    expect(failing(report)).toEqual(["jobs_terminal_as_expected"]);
    expect(violations(report, "jobs_terminal_as_expected")).toContain(`ended in complete, expected failed_embedding`);
  });

  it("a wrong vector (its vector_sha consistent, so only the mock comparison sees it)", async () => {
    const chunk = file.run.complete[1]!.chunkIds[0]!;
    const report = await planted(async (c) => {
      const { rows } = await c.query<{ embedding: number[] }>("SELECT embedding FROM upload_pipeline.document_vector_buffer WHERE chunk_id = $1", [chunk]);
      const wrong = Float32Array.from(rows[0]!.embedding);
      wrong[3] = wrong[3]! + 0.01;
      await c.query("UPDATE upload_pipeline.document_vector_buffer SET embedding = $2::real[], vector_sha = $3 WHERE chunk_id = $1", [
        chunk,
        Array.from(wrong),
        vectorSha(wrong),
      ]);
    });
    expect(failing(report)).toEqual(["vectors_match_mock"]);
    expect(violations(report, "vectors_match_mock")).toMatch(new RegExp(`vector of chunk ${chunk} .*differs from the mock's embedding.*component 3`));
  });

  it("a vector_sha that does not hash the stored floats", async () => {
    const chunk = file.run.complete[0]!.chunkIds[2]!;
    const report = await planted((c) => c.query("UPDATE upload_pipeline.document_vector_buffer SET vector_sha = $2 WHERE chunk_id = $1", [chunk, sha256("x")]));
    expect(failing(report)).toEqual(["ids_and_hashes_deterministic"]);
    expect(violations(report, "ids_and_hashes_deterministic")).toContain(`vector of chunk ${chunk}`);
  });

  it("a wrong chunk_sha", async () => {
    const chunk = file.run.complete[0]!.chunkIds[0]!;
    const report = await planted((c) =>
      c.query("UPDATE upload_pipeline.document_chunk_buffer SET chunk_sha = $2 WHERE chunk_id = $1", [chunk, sha256("not the text")]),
    );
    expect(failing(report)).toEqual(["ids_and_hashes_deterministic"]);
    expect(violations(report, "ids_and_hashes_deterministic")).toContain(
      `chunk ${chunk} (document ${file.run.complete[0]!.documentId}, ord 0): chunk_sha ${sha256("not the text")}`,
    );
  });

  it("a chunk_sha that differs from the reference run", async () => {
    const doc = file.run.complete[1]!;
    const reference = await fingerprint(file.db.pool, file.run.input.documentIds, { embed: EMBED });
    reference.get(doc.documentId)!.chunkShas[1] = sha256("the reference said otherwise");
    const report = await planted(async () => undefined, { ...file.run.input, reference });
    expect(failing(report)).toEqual(["matches_reference_run"]);
    expect(violations(report, "matches_reference_run")).toContain(`document ${doc.documentId}: chunk_sha differ from the reference run at ord 1`);
  });

  it("an illegal transition in job_events (parse_queued → parse_validated)", async () => {
    const doc = file.run.complete[0]!;
    const skipped = doc.eventIds[2]!;
    const report = await planted(async (c) => {
      await c.query("UPDATE upload_pipeline.job_events SET to_status = 'parse_validated' WHERE id = $1", [skipped]);
      await c.query("DELETE FROM upload_pipeline.job_events WHERE id = $1", [doc.eventIds[3]]);
    });
    expect(failing(report)).toEqual(["event_paths_valid"]);
    expect(violations(report, "event_paths_valid")).toContain(
      `job ${doc.jobId}: illegal transition in event #${skipped} (parse_queued → parse_validated by webhook)`,
    );
  });

  it("an edge taken by an actor the table does not allow", async () => {
    const doc = file.run.complete[1]!;
    const report = await planted((c) => c.query(`UPDATE upload_pipeline.job_events SET detail = '{"actor":"operator"}' WHERE id = $1`, [doc.eventIds[4]]));
    expect(failing(report)).toEqual(["event_paths_valid"]);
    expect(violations(report, "event_paths_valid")).toContain(
      `job ${doc.jobId}: event #${doc.eventIds[4]} (parse_validated → chunking by operator w2): actor operator may not take this edge (allowed: worker)`,
    );
  });

  it("a broken chain (an event that does not start where the previous ended)", async () => {
    const doc = file.run.complete[1]!;
    const report = await planted((c) => c.query("DELETE FROM upload_pipeline.job_events WHERE id = $1", [doc.eventIds[5]]));
    expect(failing(report)).toEqual(["event_paths_valid"]);
    expect(violations(report, "event_paths_valid")).toContain(`starts from chunks_stored but the previous event #${doc.eventIds[4]} ended in chunking`);
  });

  it("overlapping leases: tokens interleaved A, B, A", async () => {
    const doc = file.run.complete[0]!;
    const [, t2] = doc.tokens;
    const last = doc.eventIds.at(-1)!;
    // The old holder (w2) writes `complete` after w1's new claim already wrote.
    const report = await planted((c) => c.query("UPDATE upload_pipeline.job_events SET lease_token = $2, worker_id = 'w2' WHERE id = $1", [last, t2]));
    expect(failing(report)).toEqual(["no_overlapping_leases"]);
    expect(violations(report, "no_overlapping_leases")).toMatch(
      new RegExp(`job ${doc.jobId}: overlapping leases: event #${last} .* holds token ${t2} \\(w2\\) again`),
    );
  });

  it("a lease left on a terminal job", async () => {
    const doc = file.run.complete[1]!;
    const report = await planted((c) =>
      c.query(
        "UPDATE upload_pipeline.upload_jobs SET locked_by = 'w9', lease_token = gen_random_uuid(), lease_expires_at = now() + interval '1 minute' WHERE job_id = $1",
        [doc.jobId],
      ),
    );
    expect(failing(report)).toEqual(["no_overlapping_leases"]);
    expect(violations(report, "no_overlapping_leases")).toMatch(new RegExp(`job ${doc.jobId} is complete but still holds a live lease`));
  });

  it("progress counters that do not match the buffer counts", async () => {
    const doc = file.run.complete[0]!;
    const report = await planted((c) =>
      c.query(`UPDATE upload_pipeline.upload_jobs SET progress = progress || '{"vectors_done": 2}' WHERE job_id = $1`, [doc.jobId]),
    );
    expect(failing(report)).toEqual(["counters_match_buffers"]);
    expect(violations(report, "counters_match_buffers")).toContain(
      `job ${doc.jobId} (document ${doc.documentId}, complete): progress.vectors_done = 2 but the buffer holds 3`,
    );
  });

  it("job tokens that do not match the mock's usage without crashes", async () => {
    const report = await planted(async () => undefined, { ...file.run.input, mockUsage: { promptTokensByModel: { [EMBED.model]: file.run.tokens + 13 } } });
    expect(failing(report)).toEqual(["tokens_and_cost_match_usage"]);
    expect(violations(report, "tokens_and_cost_match_usage")).toContain(`= ${file.run.tokens} but the mock billed ${file.run.tokens + 13} prompt tokens`);
  });

  it("job tokens above the mock's usage even with crashes", async () => {
    const report = await planted(async () => undefined, {
      ...file.run.input,
      crashesHappened: true,
      mockUsage: { promptTokensByModel: { [EMBED.model]: file.run.tokens - 1 } },
    });
    expect(failing(report)).toEqual(["tokens_and_cost_match_usage"]);
  });

  it("a cost that is not tokens × price", async () => {
    const doc = file.run.complete[1]!;
    const report = await planted((c) =>
      c.query(`UPDATE upload_pipeline.upload_jobs SET progress = progress || '{"cost_usd": 1.5}' WHERE job_id = $1`, [doc.jobId]),
    );
    expect(failing(report)).toEqual(["tokens_and_cost_match_usage"]);
    expect(violations(report, "tokens_and_cost_match_usage")).toContain(`job ${doc.jobId} (document ${doc.documentId}): progress.cost_usd = 1.5`);
  });
});

describe("the Batch API lane's invariants", () => {
  /** Make the first complete job a bulk job embedded through one batch, billed as `progress` says. */
  async function asBatchJob(c: pg.PoolClient, progress: Record<string, number>, batchTokens: number, batchId = "batch-1") {
    const doc = file.run.complete[0]!;
    const { rows } = await c.query<{ job_id: string }>(
      `UPDATE upload_pipeline.upload_jobs SET lane = 'bulk', progress = progress || $2::jsonb WHERE document_id = $1 RETURNING job_id`,
      [doc.documentId, JSON.stringify(progress)],
    );
    await c.query(
      `INSERT INTO upload_pipeline.embedding_batches (intent_key, job_id, document_id, embed_model, embed_version, round, chunk_ids, status,
              input_file_id, batch_id, outcome, succeeded, failed, tokens, cost_usd)
       VALUES (gen_random_uuid(), $1, $2, $3, $4, 1, $5::uuid[], 'ingested', 'file-1', $6, 'completed', 3, 0, $7, 0)`,
      [rows[0]!.job_id, doc.documentId, EMBED.model, EMBED.version, doc.chunkIds, batchId, batchTokens],
    );
    return rows[0]!.job_id;
  }
  const lane = (batchesCreated: number): InvariantInput => ({ ...file.run.input, batchApi: { lane: true, batchesCreated } });

  it("a bulk job billed at the batch price, one batch per intent, passes", async () => {
    const report = await planted(async (c) => {
      const tokens = Number(
        (await c.query("SELECT progress->>'tokens' AS t FROM upload_pipeline.upload_jobs WHERE document_id = $1", [file.run.complete[0]!.documentId])).rows[0]
          .t,
      );
      await asBatchJob(c, { batch_api_tokens: tokens, batch_api_cost_usd: (tokens * 0.02) / 2 / 1e6, cost_usd: (tokens * 0.02) / 2 / 1e6 }, tokens);
    }, lane(1));
    expect(failing(report).filter((n) => n === "one_openai_batch_per_intent" || n === "bulk_jobs_billed_at_batch_price")).toEqual([]);
  });

  it("a second batch created for the same intent (the mock created more than were recorded)", async () => {
    const report = await planted((c) => asBatchJob(c, {}, 0), lane(2));
    expect(violations(report, "one_openai_batch_per_intent")).toContain("created 2 batches for 1 recorded intents");
  });

  it("a bulk job billed at the synchronous price", async () => {
    const report = await planted(async (c) => {
      const jobId = await asBatchJob(c, {}, 0);
      expect(jobId).toBeTruthy();
    }, lane(1));
    expect(failing(report)).toContain("bulk_jobs_billed_at_batch_price");
    expect(violations(report, "bulk_jobs_billed_at_batch_price")).toMatch(/only 0 through the Batch API/);
  });
});
