/**
 * What a batch commits, it commits whole (SPEC §4: vectors "written to the vector buffer one batch
 * per transaction together with the progress counters"), and the finish stage refuses a document
 * whose buffers are incomplete or corrupt.
 *
 * A split between a batch's rows and its counters cannot be seen from outside when nothing goes
 * wrong in between, so each test plants a database failure (a trigger, fired once) on one of the
 * two statements of the second batch, and then compares the counters with the buffers: were the
 * rows and the counters written in two transactions, one of the two failures leaves them apart.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { CHUNKER_NAME, CHUNKER_VERSION } from "../../src/chunking/markdownChunker.ts";
import { chunkId } from "../../src/ids.ts";
import { ManualClock } from "../../src/resilience/clock.ts";
import { FaultInjector } from "../../src/worker/faultPoints.ts";
import { drive, fingerprint, startPipelineEnv, STEPPED_FAULTS, type PipelineEnv } from "../support/pipeline.ts";

/** Small chunks, chunk-write batches and embedding batches: one short document makes several of each. */
const BATCH = 4;
const CONTENT = markdownDocument(mulberry32(7), "Atomic", 2_500);

let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({
    seed: 31,
    faults: STEPPED_FAULTS,
    env: { EMBED_BATCH_SIZE: String(BATCH), CHUNK_MAX_TOKENS: "64", CHUNK_OVERLAP_TOKENS: "8" },
  });
  env.services.settings.chunkWriteBatch = BATCH;
});
afterAll(() => env.close());

interface Ledger {
  status: string;
  last_error: { code: string; message: string } | null;
  progress: { chunks_done?: number; vectors_done?: number; batches_done?: number };
  chunks: number;
  vectors: number;
  batches: number;
}

/** The job's counters beside what its buffers hold. */
async function ledger(jobId: string): Promise<Ledger> {
  const { rows } = await env.db.pool.query<Ledger>(
    `SELECT j.status, j.last_error, j.progress,
            (SELECT count(*)::int FROM upload_pipeline.document_chunk_buffer c WHERE c.document_id = j.document_id) AS chunks,
            (SELECT count(*)::int FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
              WHERE c.document_id = j.document_id) AS vectors,
            (SELECT count(DISTINCT v.batch_id)::int FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
              WHERE c.document_id = j.document_id) AS batches
       FROM upload_pipeline.upload_jobs j WHERE j.job_id = $1`,
    [jobId],
  );
  return rows[0]!;
}

/**
 * Make the database refuse, once, the statement `table`/`event` of this job's second batch.
 * Returns how often the trigger matched (it refuses the first time only).
 */
async function failOnce(name: string, table: string, event: "INSERT" | "UPDATE", when: string): Promise<() => Promise<number>> {
  await env.db.pool.query(`
    CREATE SEQUENCE upload_pipeline.${name}_seq;
    CREATE FUNCTION upload_pipeline.${name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
      IF nextval('upload_pipeline.${name}_seq') = 1 THEN RAISE EXCEPTION 'planted failure: ${name}'; END IF;
      RETURN NEW;
    END $fn$;
    CREATE TRIGGER ${name} BEFORE ${event} ON upload_pipeline.${table} FOR EACH ROW WHEN (${when}) EXECUTE FUNCTION upload_pipeline.${name}();`);
  return async () => {
    const { rows } = await env.db.pool.query<{ last_value: string; is_called: boolean }>(`SELECT last_value, is_called FROM upload_pipeline.${name}_seq`);
    return rows[0]!.is_called ? Number(rows[0]!.last_value) : 0;
  };
}

const worker = (clock: ManualClock, faults = new FaultInjector()) => env.worker({ clock, faults });

/** Run a fresh document until the planted failure has been retried past, checking the ledger after every step. */
async function runThroughFailure(jobId: string, fired: () => Promise<number>): Promise<Ledger[]> {
  const clock = new ManualClock(Date.now());
  const seen: Ledger[] = [];
  const w = worker(clock);
  const stepper = {
    async runOnce() {
      const claimed = await w.runOnce();
      seen.push(await ledger(jobId));
      return claimed;
    },
  };
  const status = await drive(env, jobId, clock, [stepper]);
  expect(status).toBe("complete");
  // Matched once to refuse, and again when the retry wrote the same batch.
  expect(await fired()).toBeGreaterThanOrEqual(2);
  return seen;
}

describe("a batch and its counters commit together", () => {
  // Every state the job was left in after a step (including the one right after the planted
  // failure) has counters equal to the buffers.
  const consistent = (l: Ledger) => ({
    chunks_done: l.progress.chunks_done ?? 0,
    vectors_done: l.progress.vectors_done ?? 0,
    batches_done: l.progress.batches_done ?? 0,
  });
  const counted = (l: Ledger) => ({ chunks_done: l.chunks, vectors_done: l.vectors, batches_done: l.batches });

  for (const [label, table, event, when] of [
    ["the vectors' insert", "document_vector_buffer", "INSERT", "NEW.chunk_id = '{chunk}'"],
    [
      "the vector counters' update",
      "upload_jobs",
      "UPDATE",
      "NEW.job_id = '{job}' AND (NEW.progress->>'batches_done')::int = 2 AND (OLD.progress->>'batches_done')::int = 1",
    ],
    ["the chunks' insert", "document_chunk_buffer", "INSERT", "NEW.chunk_id = '{chunk}'"],
    [
      "the chunk counter's update",
      "upload_jobs",
      "UPDATE",
      `NEW.job_id = '{job}' AND (NEW.progress->>'chunks_done')::int > ${BATCH} AND (OLD.progress->>'chunks_done')::int = ${BATCH}`,
    ],
  ] as const) {
    it(`when ${label} of the second batch fails, neither its rows nor its counters are kept`, { timeout: 30_000 }, async () => {
      const doc = await env.upload({ content: CONTENT, userId: randomUUID() });
      const name = `fail_${randomUUID().replaceAll("-", "").slice(0, 12)}`;
      const secondBatchChunk = chunkId(doc.documentId, CHUNKER_NAME, CHUNKER_VERSION, BATCH);
      const fired = await failOnce(name, table, event, when.replace("{chunk}", secondBatchChunk).replace("{job}", doc.jobId));

      const steps = await runThroughFailure(doc.jobId, fired);
      // The failure happened and was retried: one step ended with the planted error recorded.
      const failedStep = steps.find((s) => s.last_error?.message.includes(`planted failure: ${name}`));
      expect(failedStep, "the planted failure was recorded").toBeDefined();
      for (const step of steps) {
        if (step.status === "chunking" || step.status === "chunks_stored") expect(step.progress.chunks_done ?? 0).toBe(step.chunks);
        if (step.progress.batches_done !== undefined) expect(consistent(step)).toEqual(counted(step));
      }
      expect(consistent(steps.at(-1)!)).toEqual(counted(steps.at(-1)!));
      const rows = await fingerprint(env, doc.documentId);
      expect(rows.every((r) => r.n === 1)).toBe(true);
    });
  }
});

describe("the finish stage", () => {
  /** A document stopped right before finish (its worker crashed there), ready to be tampered with. */
  async function atFinish(content = CONTENT) {
    const clock = new ManualClock(Date.now());
    const doc = await env.upload({ content, userId: randomUUID() });
    const faults = new FaultInjector([{ point: "stage.finish.before", nth: 1, action: "crash" }]);
    let crashed = false;
    const crasher = env.worker({ clock, faults, onJobDone: (e) => (crashed ||= e.outcome === "crashed") });
    await drive(env, doc.jobId, clock, [crasher], () => crashed);
    expect(crashed).toBe(true);
    expect((await ledger(doc.jobId)).status).toBe("embeddings_stored");
    return { doc, resume: () => drive(env, doc.jobId, clock, [worker(clock)]) };
  }

  it("refuses a document with a chunk missing its vector: failed_embedding, vectors_incomplete, nothing promoted", { timeout: 30_000 }, async () => {
    const { doc, resume } = await atFinish();
    const deleted = await env.db.pool.query("DELETE FROM upload_pipeline.document_vector_buffer WHERE chunk_id = $1", [
      chunkId(doc.documentId, CHUNKER_NAME, CHUNKER_VERSION, 3),
    ]);
    expect(deleted.rowCount).toBe(1);
    expect(await resume()).toBe("failed_embedding");
    const l = await ledger(doc.jobId);
    expect(l.last_error?.code).toBe("vectors_incomplete");
    const complete = await env.db.pool.query("SELECT 1 FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status = 'complete'", [doc.jobId]);
    expect(complete.rowCount).toBe(0);
  });

  it("refuses a document whose stored vector no longer hashes to its vector_sha", { timeout: 30_000 }, async () => {
    const { doc, resume } = await atFinish();
    const changed = await env.db.pool.query("UPDATE upload_pipeline.document_vector_buffer SET embedding[1] = embedding[1] + 0.5 WHERE chunk_id = $1", [
      chunkId(doc.documentId, CHUNKER_NAME, CHUNKER_VERSION, 2),
    ]);
    expect(changed.rowCount).toBe(1);
    expect(await resume()).toBe("failed_embedding");
    expect((await ledger(doc.jobId)).last_error?.code).toBe("vector_sha_mismatch");
  });

  it("re-hashes every stored vector, not only the first page of them: a tampered vector of the last chunk is found", { timeout: 30_000 }, async () => {
    // Finish reads the vectors in pages of 64; this document has more chunks than one page.
    const { doc, resume } = await atFinish(markdownDocument(mulberry32(8), "Paged", 20_000));
    const last = await env.db.pool.query<{ chunk_ord: number }>(
      "SELECT max(chunk_ord)::int AS chunk_ord FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1",
      [doc.documentId],
    );
    const lastOrd = last.rows[0]!.chunk_ord;
    expect(lastOrd).toBeGreaterThan(64);
    const changed = await env.db.pool.query("UPDATE upload_pipeline.document_vector_buffer SET embedding[1] = embedding[1] + 0.5 WHERE chunk_id = $1", [
      chunkId(doc.documentId, CHUNKER_NAME, CHUNKER_VERSION, lastOrd),
    ]);
    expect(changed.rowCount).toBe(1);
    expect(await resume()).toBe("failed_embedding");
    expect((await ledger(doc.jobId)).last_error?.code).toBe("vector_sha_mismatch");
  });

  it("completes the same document untouched (the refusals above are the tampering's doing)", { timeout: 30_000 }, async () => {
    const { resume } = await atFinish();
    expect(await resume()).toBe("complete");
  });
});

describe("embedding batches", () => {
  it("keep within the per-request token cap, not only the input count", {
    timeout: 30_000,
  }, async () => {
    const cap = 130; // two chunks of at most 64 tokens fit, three or four (EMBED_BATCH_SIZE) do not
    const settings = env.services.settings;
    const saved = settings.embedMaxTokensPerRequest;
    settings.embedMaxTokensPerRequest = cap;
    try {
      const clock = new ManualClock(Date.now());
      const doc = await env.upload({ content: CONTENT, userId: randomUUID() });
      expect(await drive(env, doc.jobId, clock, [worker(clock)])).toBe("complete");
      const { rows } = await env.db.pool.query<{ inputs: number; tokens: number }>(
        `SELECT count(*)::int AS inputs, sum(c.token_count)::int AS tokens
           FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
          WHERE c.document_id = $1 GROUP BY v.batch_id`,
        [doc.documentId],
      );
      expect(rows.length).toBeGreaterThan(1);
      expect(Math.max(...rows.map((r) => r.tokens))).toBeLessThanOrEqual(cap);
      expect(rows.some((r) => r.inputs > 1)).toBe(true); // the cap packs batches, not one chunk per request
    } finally {
      settings.embedMaxTokensPerRequest = saved;
    }
  });
});
