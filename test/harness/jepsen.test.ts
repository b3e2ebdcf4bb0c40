/**
 * Jepsen-style counts and `sometimes` reachability over a finished database: each count moves
 * when its kind of damage is planted, and each rare event is seen only when it happened.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { describe, expect, it } from "vitest";
import { fingerprint } from "../../harness/invariants/index.ts";
import { jepsenCounts } from "../../harness/jepsen.ts";
import { reachedEvents } from "../../harness/reachability.ts";
import type { MockStatsSnapshot } from "../../mocks/index.ts";
import { EMBED, finishedDatabaseForFile } from "./finishedDatabase.ts";

const file = finishedDatabaseForFile();

const stats = (over: Partial<{ jobsCreated: number; inputs: number; tokens: number; rateLimited: number; forgedRejected: number }> = {}): MockStatsSnapshot =>
  ({
    rateLimited: { total: over.rateLimited ?? 0, byRoute: {} },
    openai: { usage: { [EMBED.model]: { requests: 1, inputs: over.inputs ?? 5, prompt_tokens: over.tokens ?? file.run.tokens } } },
    llamaparse: { jobsCreated: over.jobsCreated ?? 3 },
    webhooks: { deliveries: { genuine: {}, duplicate: {}, forged: over.forgedRejected ? { rejected: over.forgedRejected } : {}, replay: {} } },
  }) as unknown as MockStatsSnapshot;

async function planted<T>(fault: (c: pg.PoolClient) => Promise<unknown>, check: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await file.db.pool.connect();
  try {
    await client.query("BEGIN");
    await fault(client);
    return await check(client);
  } finally {
    await client.query("ROLLBACK");
    client.release();
  }
}

describe("jepsenCounts", () => {
  const completeIds = () => file.run.complete.map((d) => d.documentId);

  it("counts nothing lost, duplicated, recovered or unexpected on a clean run", async () => {
    const reference = await fingerprint(file.db.pool, file.run.input.documentIds, { embed: EMBED });
    const counts = await jepsenCounts(
      file.db.pool,
      { documentIds: file.run.input.documentIds, completeIds: completeIds(), mockStats: stats(), killedWorkers: [] },
      reference,
    );
    expect(counts.chunks).toEqual({ expected: 5, stored: 5, lost: 0, duplicated: 0, recovered: 0, unexpected: 0 });
    expect(counts.vectors).toEqual({ expected: 5, stored: 5, lost: 0, duplicated: 0, recovered: 0, unexpected: 0 });
    expect(counts.repeated).toEqual({ parseJobs: 0, embeddingInputs: 0, embeddingTokens: 0 });
  });

  it("counts a chunk the reference never had, a vector deleted, and repeated external work", async () => {
    const reference = await fingerprint(file.db.pool, file.run.input.documentIds, { embed: EMBED });
    const [a] = file.run.complete;
    const counts = await planted(
      (c) => c.query("DELETE FROM upload_pipeline.document_vector_buffer WHERE chunk_id = $1", [a!.chunkIds[0]]),
      (c) =>
        jepsenCounts(
          c,
          {
            documentIds: file.run.input.documentIds,
            completeIds: completeIds(),
            mockStats: stats({ jobsCreated: 5, inputs: 9, tokens: file.run.tokens + 14 }),
            killedWorkers: [],
          },
          new Map([...reference].map(([id, fp]) => [id, id === a!.documentId ? { ...fp, chunkIds: fp.chunkIds.slice(1) } : fp])),
        ),
    );
    expect(counts.vectors.lost).toBe(0); // the reference no longer expects the first chunk…
    expect(counts.chunks.unexpected).toBe(1); // …so it is unexpected
    expect(counts.vectors.stored).toBe(4);
    expect(counts.repeated).toEqual({ parseJobs: 2, embeddingInputs: 5, embeddingTokens: 14 });
  });

  it("counts the chunks and vectors a reference has and the run lost", async () => {
    const reference = await fingerprint(file.db.pool, file.run.input.documentIds, { embed: EMBED });
    const [a] = file.run.complete;
    const missing = "00000000-0000-5000-8000-000000000000";
    const withExtra = new Map([...reference].map(([id, fp]) => [id, id === a!.documentId ? { ...fp, chunkIds: [...fp.chunkIds, missing] } : fp]));
    const counts = await jepsenCounts(
      file.db.pool,
      { documentIds: file.run.input.documentIds, completeIds: completeIds(), mockStats: stats(), killedWorkers: [] },
      withExtra,
    );
    expect(counts.chunks.lost).toBe(1);
    expect(counts.vectors.lost).toBe(1);
  });

  it("counts the chunks of a job a killed worker held and another finished as recovered", async () => {
    const [a] = file.run.complete;
    const counts = await planted(
      (c) => c.query("UPDATE upload_pipeline.job_events SET worker_id = 'w9.1' WHERE id = $1", [a!.eventIds[1]]),
      (c) => jepsenCounts(c, { documentIds: file.run.input.documentIds, completeIds: completeIds(), mockStats: stats(), killedWorkers: ["w9.1"] }, undefined),
    );
    expect(counts.chunks.recovered).toBe(a!.chunkIds.length);
    expect(counts.vectors.recovered).toBe(a!.chunkIds.length);
  });
});

describe("reachedEvents", () => {
  it("sees only what happened: a dead letter, 429s, a refused forgery, a breaker that opened and closed", async () => {
    const logDir = mkdtempSync(join(tmpdir(), "reach-"));
    const base = { pool: file.db.pool, documentIds: file.run.input.documentIds, postgresRestarts: 0, logDir, killedWorkers: [] };
    expect(await reachedEvents({ ...base, mockStats: stats() })).toEqual(["dead_lettered"]);
    writeFileSync(
      join(logDir, "w0.1.log"),
      [
        '{"service":"openai","state":"open","msg":"circuit breaker changed state"}',
        '{"service":"openai","state":"closed","msg":"circuit breaker changed state"}',
        "",
      ].join("\n"),
    );
    const reached = await reachedEvents({ ...base, mockStats: stats({ rateLimited: 3, forgedRejected: 1 }), postgresRestarts: 1 });
    expect(reached).toEqual(["breaker_opened_and_closed", "forged_webhook_refused", "rate_limited", "dead_lettered", "postgres_restarted"]);
  });
});
