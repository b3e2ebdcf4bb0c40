/**
 * The Batch API lane (issue 14) against a real PostgreSQL and the OpenAI mock's Files and
 * Batches APIs (the official SDK, intercepted in-process): a bulk job embeds through one batch,
 * released between polls, at half price; a crash after files.create or after batches.create
 * never leads to a second file or batch; a partly failed or expired batch re-queues only the
 * requests it left out; batches that keep leaving requests out, or one OpenAI fails outright,
 * end in the synchronous API; an output file's line that is not ours, repeated or of the wrong
 * width never becomes a vector or a count.
 *
 * The workers and the mocks share one simulated clock, so a batch's schedule (validating →
 * in_progress → finalizing → completed) advances exactly as the job's snoozes do.
 */
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { expectedEmbedding, type FaultPlanInput } from "../../mocks/index.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { costUsd } from "../../src/clients/tokens.ts";
import { vectorSha } from "../../src/ids.ts";
import { ManualClock } from "../../src/resilience/clock.ts";
import { MAX_SHORT_BATCHES } from "../../src/stages/embedBatch.ts";
import type { JobRunOutcome } from "../../src/worker/BaseWorker.ts";
import { FaultInjector, type FaultRule } from "../../src/worker/faultPoints.ts";
import { startPipelineEnv, STEPPED_FAULTS, type PipelineEnv } from "../support/pipeline.ts";

const MODEL = "text-embedding-3-small";
const CONTENT = markdownDocument(mulberry32(7), "Backfilled", 3_000);
/** A batch spends 1 s validating, 2 s in progress, 1 s finalizing (simulated): the job polls while it waits. */
const SCHEDULE = { validatingMs: 1_000, inProgressMs: 2_000, finalizingMs: 1_000 };

let env: PipelineEnv;
let clock: ManualClock;

type BatchFates = NonNullable<NonNullable<FaultPlanInput["openai"]>["batches"]>;

async function start(batches: BatchFates = {}) {
  clock = new ManualClock(Date.now());
  env = await startPipelineEnv({
    seed: 31,
    faults: { ...STEPPED_FAULTS, openai: { batches: { schedule: SCHEDULE, ...batches } } },
    mocksNow: () => clock.now(),
    env: { CHUNK_MAX_TOKENS: "64", CHUNK_OVERLAP_TOKENS: "8" },
  });
}
beforeEach(() => {
  env = undefined as unknown as PipelineEnv;
});
afterEach(() => env?.close());

interface BatchRow {
  intent_key: string;
  round: number;
  chunk_ids: string[];
  status: string;
  outcome: string | null;
  batch_id: string | null;
  input_file_id: string | null;
  succeeded: number | null;
  failed: number | null;
  tokens: string | null;
  polls: number;
}

const batchRows = async (jobId: string) =>
  (await env.db.pool.query<BatchRow>("SELECT * FROM upload_pipeline.embedding_batches WHERE job_id = $1 ORDER BY round", [jobId])).rows;

const jobRow = async (jobId: string) =>
  (
    await env.db.pool.query<{ status: string; progress: Record<string, string | number>; lease_token: string | null; next_attempt_at: Date }>(
      "SELECT status, progress, lease_token, next_attempt_at FROM upload_pipeline.upload_jobs WHERE job_id = $1",
      [jobId],
    )
  ).rows[0]!;

/**
 * Step `workers` in turn (each until it crashes) on the shared clock until `done` holds: when
 * nothing is claimable, move the clock to the earliest next attempt of the jobs not complete (a
 * poll's snooze, a crashed holder's lease).
 */
async function driveUntil(jobIds: string | string[], workers: Array<{ runOnce(): Promise<unknown>; crashed?: () => boolean }>, done: () => Promise<boolean>) {
  let w = 0;
  for (let step = 0; step < 300; step++) {
    if (await done()) return;
    const { rows } = await env.db.pool.query<{ due: Date }>(
      `SELECT greatest(next_attempt_at, lease_expires_at) AS due FROM upload_pipeline.upload_jobs
        WHERE job_id = ANY($1::uuid[]) AND status <> 'complete' ORDER BY 1 LIMIT 1`,
      [[jobIds].flat()],
    );
    const worker = workers[w]!;
    const claimed = await worker.runOnce();
    if (worker.crashed?.() && w < workers.length - 1) w += 1;
    if (claimed) continue;
    await clock.advance(Math.max(1, (rows[0]?.due.getTime() ?? 0) - clock.now() + 1));
  }
  throw new Error(`job ${[jobIds].flat().join(", ")} did not get there in 300 steps`);
}

const complete = (jobId: string) => async () => (await jobRow(jobId)).status === "complete";

/**
 * A bulk document whose first batch meets the fate `batches` and the next ones none, driven to
 * complete. A batch's fate is drawn when it is created: the fault is cleared once the first exists.
 */
async function completeWithFirstBatchFaulted(batches: BatchFates) {
  await start(batches);
  const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
  const w = worker();
  await driveUntil(doc.jobId, [w], async () => (await batchRows(doc.jobId)).some((r) => r.status === "submitted"));
  env.mocks.setFaults({ ...STEPPED_FAULTS, openai: { batches: { schedule: SCHEDULE } } });
  await driveUntil(doc.jobId, [w], complete(doc.jobId));
  return doc;
}

function worker(faults = new FaultInjector(), outcomes: JobRunOutcome[] = []) {
  return env.worker({ clock, faults, leaseSeconds: 30, onJobDone: (e) => outcomes.push(e.outcome) });
}

/** Every chunk of the document has exactly one vector, and it is the mock's vector for the chunk's text. */
async function expectOneTrueVectorPerChunk(documentId: string) {
  const { rows } = await env.db.pool.query<{ text: string; vector_sha: string | null; n: number }>(
    `SELECT c.text, v.vector_sha, (SELECT count(*)::int FROM upload_pipeline.document_vector_buffer x WHERE x.chunk_id = c.chunk_id) AS n
       FROM upload_pipeline.document_chunk_buffer c LEFT JOIN upload_pipeline.document_vector_buffer v USING (chunk_id)
      WHERE c.document_id = $1 ORDER BY c.chunk_ord`,
    [documentId],
  );
  expect(rows.length).toBeGreaterThan(5);
  for (const r of rows) {
    expect(r.n).toBe(1);
    expect(r.vector_sha).toBe(vectorSha(Float32Array.from(expectedEmbedding(MODEL, r.text))));
  }
  return rows.length;
}

/** One line of a batch's output or error file (the fields these tests read). */
interface ResultLine {
  custom_id: string;
  response: { body: { data?: Array<{ embedding: number[] }> } } | null;
}

/** The lines of the output or error file of the batch `batchId`, as the mock wrote them. */
function resultLines(batchId: string, file: "outputFileId" | "errorFileId"): ResultLine[] {
  const batch = env.mocks.state.batches.batches.get(batchId)!;
  const stored = env.mocks.state.batches.files.get(batch.result![file]!)!;
  return Buffer.from(stored.bytes)
    .toString("utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as ResultLine);
}

/** The custom_ids of the error file of the batch `batchId`. */
const failedCustomIds = (batchId: string) => resultLines(batchId, "errorFileId").map((l) => l.custom_id);

describe("the Batch API lane", () => {
  it("embeds a bulk job through one batch, released between polls, at half the synchronous price", async () => {
    await start();
    const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
    const outcomes: JobRunOutcome[] = [];
    await driveUntil(doc.jobId, [worker(undefined, outcomes)], complete(doc.jobId));

    const chunks = await expectOneTrueVectorPerChunk(doc.documentId);
    const stats = env.mocks.stats();
    expect(stats.openai.batches).toEqual({ created: 1, finished: { completed: 1 } });
    expect(stats.requests["openai.files.create"]).toEqual({ "200": 1 });
    expect(stats.openai.usage[MODEL]).toBeUndefined(); // nothing went through /v1/embeddings
    const [row] = await batchRows(doc.jobId);
    expect(row).toMatchObject({ round: 1, status: "ingested", outcome: "completed", succeeded: chunks, failed: 0 });
    // Waiting on OpenAI never held the job: each poll was a release with a snooze.
    expect(row!.polls).toBeGreaterThanOrEqual(2);
    expect(outcomes.filter((o) => o === "snoozed")).toHaveLength(row!.polls);

    const { progress } = await jobRow(doc.jobId);
    const billed = stats.openai.batchUsage[MODEL]!.prompt_tokens;
    expect(Number(progress.tokens)).toBe(billed);
    expect(Number(progress.batch_api_tokens)).toBe(billed);
    expect(Number(progress.cost_usd)).toBeCloseTo(costUsd(MODEL, billed, "batch"), 12);
    expect(Number(progress.batch_api_cost_usd)).toBeCloseTo(costUsd(MODEL, billed) / 2, 12);
    // Stored in groups of EMBED_BATCH_SIZE (16 here), each counted with its vectors.
    expect(Number(progress.vectors_done)).toBe(chunks);
    expect(Number(progress.batches_done)).toBe(Math.ceil(chunks / 16));
  });

  it("embeds an interactive job synchronously, and a bulk one too when EMBED_BULK_VIA_BATCH_API=false", async () => {
    clock = new ManualClock(Date.now());
    env = await startPipelineEnv({ seed: 31, faults: STEPPED_FAULTS, mocksNow: () => clock.now(), env: { EMBED_BULK_VIA_BATCH_API: "false" } });
    const bulk = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
    await driveUntil(bulk.jobId, [worker()], complete(bulk.jobId));
    expect(env.mocks.stats().openai.batches.created).toBe(0);
    expect(env.mocks.stats().openai.usage[MODEL]!.prompt_tokens).toBeGreaterThan(0);
    expect(await batchRows(bulk.jobId)).toEqual([]);
  });

  for (const [point, what] of [
    ["call.openai.files.create.after", "files.create"],
    ["call.openai.batches.create.after", "batches.create"],
  ] as const) {
    it(`a crash right after ${what} creates no second file and no second batch`, async () => {
      await start();
      const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
      const injector = new FaultInjector([{ point, action: "crash" } satisfies FaultRule]);
      let crashedAt: string | undefined;
      const crasher = env.worker({
        clock,
        faults: injector,
        leaseSeconds: 30,
        onJobDone: (e) => {
          if (e.outcome === "crashed") crashedAt = injector.seen.at(-1);
        },
      });
      await driveUntil(doc.jobId, [{ runOnce: () => crasher.runOnce(), crashed: () => crashedAt !== undefined }, worker()], complete(doc.jobId));

      expect(crashedAt).toBe(point); // the crash happened, right after the call
      const stats = env.mocks.stats();
      expect(stats.requests["openai.files.create"]).toEqual({ "200": 1 });
      expect(stats.requests["openai.batches.create"]).toEqual({ "200": 1 });
      const [row, ...more] = await batchRows(doc.jobId);
      expect(more).toEqual([]);
      expect(row!.batch_id).toBe([...env.mocks.state.batches.batches.keys()][0]);
      expect(row!.input_file_id).toBe(env.mocks.state.batches.batches.get(row!.batch_id!)!.inputFileId);
      await expectOneTrueVectorPerChunk(doc.documentId);
      // Tokens counted once: what the one batch billed.
      expect(Number((await jobRow(doc.jobId)).progress.tokens)).toBe(stats.openai.batchUsage[MODEL]!.prompt_tokens);
    });
  }

  it("a crash part-way through ingesting stores and bills each vector once when the output is read again", async () => {
    await start();
    const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
    const injector = new FaultInjector([{ point: "commit.batch_ingested.before", action: "crash" }]);
    let crashed = false;
    const crasher = env.worker({
      clock,
      faults: injector,
      leaseSeconds: 30,
      onJobDone: (e) => (crashed ||= e.outcome === "crashed"),
    });
    await driveUntil(doc.jobId, [{ runOnce: () => crasher.runOnce(), crashed: () => crashed }, worker()], complete(doc.jobId));
    expect(crashed).toBe(true);
    expect(env.mocks.stats().requests["openai.files.content"]?.["200"]).toBe(2); // the output was read twice
    const chunks = await expectOneTrueVectorPerChunk(doc.documentId);
    const { progress } = await jobRow(doc.jobId);
    const billed = env.mocks.stats().openai.batchUsage[MODEL]!.prompt_tokens;
    expect(Number(progress.tokens)).toBe(billed);
    expect(Number(progress.batch_api_tokens)).toBe(billed);
    expect(Number(progress.vectors_done)).toBe(chunks);
  });

  it("a partly failed batch re-queues only its failed requests", async () => {
    const doc = await completeWithFirstBatchFaulted({ partialFailure: { rate: 1, requests: 0.3 } });

    const [first, second, ...more] = await batchRows(doc.jobId);
    expect(more).toEqual([]);
    const failed = failedCustomIds(first!.batch_id!);
    expect(failed.length).toBeGreaterThan(0);
    expect(first).toMatchObject({ outcome: "completed", failed: failed.length, succeeded: first!.chunk_ids.length - failed.length });
    expect([...second!.chunk_ids].sort()).toEqual([...failed].sort());
    expect(second).toMatchObject({ round: 2, outcome: "completed", failed: 0 });
    await expectOneTrueVectorPerChunk(doc.documentId);
    expect(env.mocks.stats().openai.usage[MODEL]).toBeUndefined();
  });

  it("an expired batch keeps what it finished and re-submits the rest", async () => {
    const doc = await completeWithFirstBatchFaulted({ expire: { rate: 1, completedFraction: 0.5 } });

    const [first, second] = await batchRows(doc.jobId);
    expect(first).toMatchObject({ outcome: "expired" });
    expect(first!.succeeded).toBeGreaterThan(0);
    expect(first!.failed).toBeGreaterThan(0);
    expect([...second!.chunk_ids].sort()).toEqual([...failedCustomIds(first!.batch_id!)].sort());
    expect(second).toMatchObject({ outcome: "completed", failed: 0 });
    await expectOneTrueVectorPerChunk(doc.documentId);
  });

  it(`after ${MAX_SHORT_BATCHES} batches that left requests out, the rest goes through the synchronous API`, async () => {
    await start({ expire: { rate: 1, completedFraction: 0.3 } });
    const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
    await driveUntil(doc.jobId, [worker()], complete(doc.jobId));

    const rows = await batchRows(doc.jobId);
    expect(rows.map((r) => r.outcome)).toEqual(Array(MAX_SHORT_BATCHES).fill("expired"));
    const last = rows.at(-1)!;
    const stats = env.mocks.stats();
    expect(stats.openai.usage[MODEL]!.inputs).toBe(last.failed); // exactly what the batches left out
    await expectOneTrueVectorPerChunk(doc.documentId);
    const { progress } = await jobRow(doc.jobId);
    const batchTokens = stats.openai.batchUsage[MODEL]!.prompt_tokens;
    const syncTokens = stats.openai.usage[MODEL]!.prompt_tokens;
    expect(Number(progress.tokens)).toBe(batchTokens + syncTokens);
    expect(Number(progress.batch_api_tokens)).toBe(batchTokens);
    expect(Number(progress.cost_usd)).toBeCloseTo(costUsd(MODEL, batchTokens, "batch") + costUsd(MODEL, syncTokens), 10);
  });

  for (const [point, call] of [
    ["call.openai.files.create.before", "openai.files.create"],
    ["call.openai.batches.create.before", "openai.batches.create"],
  ] as const) {
    it(`a worker that lost its lease right before ${call} does not call it`, async () => {
      await start();
      const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
      const takeLease = async () => {
        await env.db.pool.query(
          "UPDATE upload_pipeline.upload_jobs SET lease_token = gen_random_uuid(), lease_expires_at = now() + interval '5 minutes' WHERE job_id = $1",
          [doc.jobId],
        );
      };
      const outcomes: JobRunOutcome[] = [];
      await driveUntil(doc.jobId, [worker(new FaultInjector([{ point, action: takeLease }]), outcomes)], async () => outcomes.includes("lost"));
      expect(env.mocks.stats().requests[call]).toBeUndefined();
    });
  }

  for (const [point, what] of [
    ["call.openai.files.create.before", "file"],
    ["call.openai.batches.create.before", "batch"],
  ] as const) {
    it(`after a crash before its ${what} was created, the lookup does not adopt another job's ${what}`, async () => {
      await start();
      const other = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
      await driveUntil(other.jobId, [worker()], complete(other.jobId));
      const doc = await env.upload({ content: markdownDocument(mulberry32(8), "Second", 3_000), userId: randomUUID(), lane: "bulk" });
      const outcomes: JobRunOutcome[] = [];
      const crasher = worker(new FaultInjector([{ point, action: "crash" }]), outcomes);
      await driveUntil(doc.jobId, [{ runOnce: () => crasher.runOnce(), crashed: () => outcomes.includes("crashed") }, worker()], complete(doc.jobId));
      expect(outcomes).toContain("crashed");

      const [theirs] = await batchRows(other.jobId);
      const [ours, ...more] = await batchRows(doc.jobId);
      expect(more).toEqual([]);
      expect(ours!.input_file_id).not.toBe(theirs!.input_file_id);
      expect(ours!.batch_id).not.toBe(theirs!.batch_id);
      expect(env.mocks.stats().openai.batches.created).toBe(2);
      await expectOneTrueVectorPerChunk(doc.documentId);
    });
  }

  it("between polls the job waits 1 s, then twice as long each time, up to EMBED_BATCH_POLL_MAX_SECONDS", async () => {
    clock = new ManualClock(Date.now());
    env = await startPipelineEnv({
      seed: 31,
      faults: { ...STEPPED_FAULTS, openai: { batches: { schedule: { validatingMs: 1_000, inProgressMs: 600_000, finalizingMs: 1_000 } } } },
      mocksNow: () => clock.now(),
      env: { CHUNK_MAX_TOKENS: "64", CHUNK_OVERLAP_TOKENS: "8", EMBED_BATCH_POLL_MAX_SECONDS: "4" },
    });
    const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
    const outcomes: JobRunOutcome[] = [];
    const w = worker(undefined, outcomes);
    const waits: number[] = [];
    while (waits.length < 5) {
      const before = outcomes.length;
      await driveUntil(doc.jobId, [w], async () => outcomes.length > before && outcomes.at(-1) === "snoozed");
      waits.push((await jobRow(doc.jobId)).next_attempt_at.getTime() - clock.now());
    }
    expect(waits).toEqual([1_000, 2_000, 4_000, 4_000, 4_000]);
  });

  it("a batch OpenAI fails outright is not sent again: the whole document goes through the synchronous API", async () => {
    await start({ failed: { rate: 1 } });
    const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
    await driveUntil(doc.jobId, [worker()], complete(doc.jobId));

    const [row, ...more] = await batchRows(doc.jobId);
    expect(more).toEqual([]);
    expect(env.mocks.state.batches.batches.get(row!.batch_id!)!.errors.map((e) => e.code)).toEqual(["token_limit_exceeded"]);
    expect(row).toMatchObject({ outcome: "failed", succeeded: 0, failed: row!.chunk_ids.length });
    const stats = env.mocks.stats();
    expect(stats.openai.batches).toEqual({ created: 1, finished: { failed: 1 } });
    const chunks = await expectOneTrueVectorPerChunk(doc.documentId);
    expect(stats.openai.usage[MODEL]!.inputs).toBe(chunks);
    const { progress } = await jobRow(doc.jobId);
    expect(Number(progress.tokens)).toBe(stats.openai.usage[MODEL]!.prompt_tokens);
    expect(Number(progress.batch_api_tokens ?? 0)).toBe(0);
  });

  it("a line of the output file that answers another job's request is neither stored nor counted by this job", async () => {
    await start({ foreignLine: { rate: 1 } });
    const docs = [
      await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" }),
      await env.upload({ content: markdownDocument(mulberry32(8), "Second", 3_000), userId: randomUUID(), lane: "bulk" }),
    ];
    const jobIds = docs.map((d) => d.jobId);
    await driveUntil(jobIds, [worker()], async () => (await complete(jobIds[0]!)()) && (await complete(jobIds[1]!)()));

    const rows = await Promise.all(jobIds.map(async (id) => (await batchRows(id))[0]!));
    let tokens = 0;
    for (const [i, doc] of docs.entries()) {
      const [ours, theirs] = [rows[i]!, rows[1 - i]!];
      // The fault happened: this job's output file answers one request of the other job's batch.
      const foreign = resultLines(ours.batch_id!, "outputFileId").filter((l) => !ours.chunk_ids.includes(l.custom_id));
      expect(foreign).toHaveLength(1);
      expect(theirs.chunk_ids).toContain(foreign[0]!.custom_id);

      expect(await batchRows(doc.jobId)).toHaveLength(1);
      const chunks = await expectOneTrueVectorPerChunk(doc.documentId);
      expect(ours).toMatchObject({ outcome: "completed", succeeded: chunks, failed: 0 });
      const { rows: writers } = await env.db.pool.query<{ batch_id: string }>(
        `SELECT DISTINCT v.batch_id FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
          WHERE c.document_id = $1`,
        [doc.documentId],
      );
      expect(writers.map((r) => r.batch_id)).toEqual([ours.intent_key]); // every vector stored by this document's own batch
      const { progress } = await jobRow(doc.jobId);
      expect(Number(progress.vectors_done)).toBe(chunks);
      expect(Number(progress.tokens)).toBe(Number(ours.tokens));
      tokens += Number(progress.tokens);
    }
    expect(tokens).toBe(env.mocks.stats().openai.batchUsage[MODEL]!.prompt_tokens);
  });

  it("a line written twice in the output file is stored, counted and billed once", async () => {
    await start({ duplicateLine: { rate: 1 } });
    const doc = await env.upload({ content: CONTENT, userId: randomUUID(), lane: "bulk" });
    await driveUntil(doc.jobId, [worker()], complete(doc.jobId));

    const [row, ...more] = await batchRows(doc.jobId);
    expect(more).toEqual([]);
    const ids = resultLines(row!.batch_id!, "outputFileId").map((l) => l.custom_id);
    expect(ids).toHaveLength(new Set(ids).size + 1); // the fault happened: one custom_id twice
    const chunks = await expectOneTrueVectorPerChunk(doc.documentId);
    expect(row).toMatchObject({ outcome: "completed", succeeded: chunks, failed: 0 });
    const billed = env.mocks.stats().openai.batchUsage[MODEL]!.prompt_tokens;
    expect(Number(row!.tokens)).toBe(billed);
    const { progress } = await jobRow(doc.jobId);
    expect(Number(progress.vectors_done)).toBe(chunks);
    expect(Number(progress.tokens)).toBe(billed);
    expect(Number(progress.batch_api_tokens)).toBe(billed);
    expect(Number(progress.cost_usd)).toBeCloseTo(costUsd(MODEL, billed, "batch"), 12);
  });

  it("a vector of the wrong width is not stored: its request goes in the next round", async () => {
    const doc = await completeWithFirstBatchFaulted({ wrongDimensions: { rate: 1, dimensions: 8 } });

    const [first, second, ...more] = await batchRows(doc.jobId);
    expect(more).toEqual([]);
    const cut = resultLines(first!.batch_id!, "outputFileId").filter((l) => l.response!.body.data![0]!.embedding.length !== 1536);
    expect(cut.map((l) => l.response!.body.data![0]!.embedding.length)).toEqual([8]); // the fault happened
    expect(first).toMatchObject({ outcome: "completed", succeeded: first!.chunk_ids.length - 1, failed: 1 });
    expect(second!.chunk_ids).toEqual([cut[0]!.custom_id]);
    expect(second).toMatchObject({ round: 2, outcome: "completed", succeeded: 1, failed: 0 });
    await expectOneTrueVectorPerChunk(doc.documentId);
  });
});
