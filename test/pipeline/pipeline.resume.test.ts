/**
 * Resume after a crash (SPEC §5 "Resume"): a worker that dies at any step boundary leaves its job
 * to its lease; once the lease expires another worker continues where the buffers say the job
 * stopped, and the result is row for row what an uninterrupted run of the same content stores.
 *
 * The crash points are not hand-listed: an uninterrupted reference run records every fault point
 * it passes (`FaultInjector.seen`), and the test crashes once at each occurrence of each point,
 * which includes every stage boundary and every step between two embedding batches.
 *
 * Time is simulated: the workers read a `ManualClock`, and "the lease expired" is the clock
 * moving past `lease_expires_at`, not a sleep. Webhooks are dropped so parse intake runs in the
 * worker (the reconciler), where its fault points are; LlamaParse finishes jobs at once.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { CHUNKER_NAME, CHUNKER_VERSION } from "../../src/chunking/markdownChunker.ts";
import { chunkId } from "../../src/ids.ts";
import { ManualClock } from "../../src/resilience/clock.ts";
import { FaultInjector, type FaultRule } from "../../src/worker/faultPoints.ts";
import { drive, fingerprint, startPipelineEnv, STEPPED_FAULTS, type PipelineEnv } from "../support/pipeline.ts";

const MODEL = "text-embedding-3-small";
const LEASE_SECONDS = 30;
/** Small chunks and batches, so one short document makes several embedding batches. */
const BATCH = 4;
const CONTENT = markdownDocument(mulberry32(42), "Resumable", 2_500);

let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({
    seed: 21,
    faults: STEPPED_FAULTS,
    env: { EMBED_BATCH_SIZE: String(BATCH), CHUNK_MAX_TOKENS: "64", CHUNK_OVERLAP_TOKENS: "8" },
  });
});
afterAll(() => env.close());

function workerOn(clock: ManualClock, faults: FaultInjector, onCrash?: () => void) {
  return env.worker({
    clock,
    faults,
    leaseSeconds: LEASE_SECONDS,
    onJobDone: (e) => {
      if (e.outcome === "crashed") onCrash?.();
    },
  });
}

interface Run {
  documentId: string;
  jobId: string;
  status: string;
  /** OpenAI inputs (and LlamaParse jobs) this run caused. */
  inputs: number;
  parseJobs: number;
  path: string[];
}

async function run(rules: FaultRule[] = []): Promise<Run & { seen: string[]; crashedAt: string | undefined }> {
  const before = env.mocks.stats();
  // A fresh clock per run starting at real time: LlamaParse's job list (looked up by a resumed
  // submit) is filtered by real creation times.
  const clock = new ManualClock(Date.now());
  const doc = await env.upload({ content: CONTENT, userId: randomUUID() });
  const injector = new FaultInjector(rules);
  let crashedAt: string | undefined;
  const crasher = workerOn(clock, injector, () => (crashedAt = injector.seen.at(-1)));
  // The job is resumed by another worker, after the crashed one's lease has expired.
  const resumer = workerOn(clock, new FaultInjector());
  const status = await drive(env, doc.jobId, clock, [{ runOnce: () => crasher.runOnce(), crashed: () => crashedAt !== undefined }, resumer]);
  const after = env.mocks.stats();
  const events = await env.db.pool.query<{ to_status: string }>("SELECT to_status FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id", [doc.jobId]);
  return {
    ...doc,
    status,
    inputs: (after.openai.usage[MODEL]?.inputs ?? 0) - (before.openai.usage[MODEL]?.inputs ?? 0),
    parseJobs: after.llamaparse.jobsCreated - before.llamaparse.jobsCreated,
    path: events.rows.map((r) => r.to_status),
    seen: injector.seen,
    crashedAt,
  };
}

/** Each occurrence of each point in the reference run: `{ point, nth }`. */
function occurrences(seen: string[]): Array<{ point: string; nth: number }> {
  const counts = new Map<string, number>();
  return seen.map((point) => {
    const nth = (counts.get(point) ?? 0) + 1;
    counts.set(point, nth);
    return { point, nth };
  });
}

describe("crash and resume", () => {
  it("a crash at every fault point of a run, then resume, stores the same chunks and vectors as an uninterrupted run, once", { timeout: 60_000 }, async () => {
    const reference = await run();
    expect(reference.status).toBe("complete");
    expect(reference.crashedAt).toBeUndefined();
    const expected = await fingerprint(env, reference.documentId);
    const chunks = expected.length;
    expect(chunks).toBeGreaterThan(2 * BATCH); // at least three embedding batches
    expect(expected.every((r) => r.n === 1 && r.vector_sha !== null)).toBe(true);
    expect(reference.inputs).toBe(chunks);

    const targets = occurrences(reference.seen);
    // The list covers every stage's boundaries and the steps between embedding batches.
    for (const stage of ["submit_parse", "reconcile_parse", "validate", "chunk", "embed", "finish"]) {
      expect(targets).toContainEqual({ point: `stage.${stage}.before`, nth: 1 });
    }
    expect(targets).toContainEqual({ point: "commit.vectors.after", nth: 2 });

    for (const target of targets) {
      const label = `${target.point}#${target.nth}`;
      const r = await run([{ point: target.point, nth: target.nth, action: "crash" }]);
      expect(r.crashedAt, label).toBe(target.point);
      expect(r.status, label).toBe("complete");

      // Same chunk ids (recomputed for this document), chunk_sha and vector_sha, one vector each.
      const rows = await fingerprint(env, r.documentId);
      expect(
        rows.map((x) => x.chunk_id),
        label,
      ).toEqual(expected.map((_, ord) => chunkId(r.documentId, CHUNKER_NAME, CHUNKER_VERSION, ord)));
      expect(
        rows.map((x) => x.chunk_sha),
        label,
      ).toEqual(expected.map((x) => x.chunk_sha));
      expect(
        rows.map((x) => x.vector_sha),
        label,
      ).toEqual(expected.map((x) => x.vector_sha));
      expect(
        rows.every((x) => x.n === 1),
        label,
      ).toBe(true);
      // Every transition happened once, in the reference order.
      expect(r.path, label).toEqual(reference.path);
      // LlamaParse billed one parse: a resumed submit found the job the crashed one had sent.
      expect(r.parseJobs, label).toBe(1);

      // The resumed embed stage sent only chunks without a vector: every chunk once, plus the
      // one batch whose answer the crash lost (crashed after the call, before its commit).
      const lostAnswer = target.point === "call.openai.embed.after" || target.point === "commit.vectors.before";
      const lostBatch = lostAnswer ? Math.min(BATCH, chunks - BATCH * (target.nth - 1)) : 0;
      expect(r.inputs, label).toBe(chunks + lostBatch);
    }

    // No duplicate rows anywhere: one chunk row per (document, ord), one vector per chunk.
    const dupes = await env.db.pool.query(
      `SELECT 'chunk' AS kind, document_id::text AS key FROM upload_pipeline.document_chunk_buffer GROUP BY document_id, chunker_name, chunker_version, chunk_ord HAVING count(*) > 1
       UNION ALL
       SELECT 'vector', chunk_id::text FROM upload_pipeline.document_vector_buffer GROUP BY chunk_id, embed_model, embed_version HAVING count(*) > 1`,
    );
    expect(dupes.rows).toEqual([]);
    const totals = await env.db.pool.query<{ chunks: number; vectors: number }>(
      `SELECT (SELECT count(*)::int FROM upload_pipeline.document_chunk_buffer) AS chunks, (SELECT count(*)::int FROM upload_pipeline.document_vector_buffer) AS vectors`,
    );
    expect(totals.rows[0]).toEqual({ chunks: chunks * (targets.length + 1), vectors: chunks * (targets.length + 1) });
  });
});
