/**
 * The chunk stage (`parse_validated → chunking → chunks_stored`) verifies what is stored against
 * what this run computed, and counts each stored chunk once however often it is resumed. Real
 * PostgreSQL, the mocks' handlers, real workers stepped with `runOnce`, crashes at fault points.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { systemClock, type Clock } from "../../src/resilience/clock.ts";
import type { JobRunOutcome } from "../../src/worker/BaseWorker.ts";
import { FaultInjector } from "../../src/worker/faultPoints.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";
import { until } from "../support/until.ts";

let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({ seed: 37 });
});
afterAll(() => env.close());

/** A worker clock `ms` ahead: past the leases that crashed workers left (30 s each). */
const ahead = (ms: number): Clock => ({ ...systemClock, now: () => Date.now() + ms });

/** Runs the job with a worker that crashes right before `chunks_stored` commits (every chunk is stored by then). */
async function crashBeforeChunksStored(jobId: string, clock: Clock): Promise<void> {
  const outcomes: JobRunOutcome[] = [];
  const worker = env.worker({
    clock,
    faults: new FaultInjector([{ point: "commit.chunks_stored.before", action: "crash" }]),
    onJobDone: (e) => void outcomes.push(e.outcome),
  });
  // Claims whatever is due (the parse's webhook makes the job due) until the crash.
  await until("a crash before chunks_stored", async () => {
    await worker.runOnce();
    return outcomes.includes("crashed");
  });
  const { rows } = await env.db.pool.query<{ status: string }>("SELECT status FROM upload_pipeline.upload_jobs WHERE job_id = $1", [jobId]);
  expect(rows[0]!.status).toBe("chunking");
}

const storedChunks = async (documentId: string) =>
  (await env.db.pool.query<{ n: number }>("SELECT count(*)::int AS n FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1", [documentId])).rows[0]!
    .n;

describe("the chunk stage", () => {
  it("a resumed run counts in chunks_done only the chunks it wrote, not those an earlier run stored", async () => {
    const doc = await env.upload({ content: markdownDocument(mulberry32(3), "Resumed", 4_000) });
    await crashBeforeChunksStored(doc.jobId, systemClock);
    await crashBeforeChunksStored(doc.jobId, ahead(120_000)); // rewrote nothing: every row conflicted
    const { rows } = await env.db.pool.query<{ progress: { chunks_done: number } }>("SELECT progress FROM upload_pipeline.upload_jobs WHERE job_id = $1", [
      doc.jobId,
    ]);
    const stored = await storedChunks(doc.documentId);
    expect(stored).toBeGreaterThan(1);
    expect(rows[0]!.progress.chunks_done).toBe(stored);
  });

  it("stored chunks that differ from this run's output, though as many, fail the job: failed_chunking, chunks_mismatch", async () => {
    const doc = await env.upload({ content: markdownDocument(mulberry32(5), "Changed", 4_000) });
    await crashBeforeChunksStored(doc.jobId, systemClock);
    // What an earlier chunker, changed without a version bump, would have stored for chunk 0.
    await env.db.pool.query(
      "UPDATE upload_pipeline.document_chunk_buffer SET text = 'older output', chunk_sha = repeat('0', 64) WHERE document_id = $1 AND chunk_ord = 0",
      [doc.documentId],
    );
    const worker = env.worker({ clock: ahead(120_000) });
    await worker.start();
    try {
      expect((await waitForTerminal(env, [doc.jobId], 20_000)).get(doc.jobId)).toBe("failed_chunking");
    } finally {
      await worker.stop();
    }
    const { rows } = await env.db.pool.query<{ last_error: { code: string } }>("SELECT last_error FROM upload_pipeline.upload_jobs WHERE job_id = $1", [
      doc.jobId,
    ]);
    expect(rows[0]!.last_error.code).toBe("chunks_mismatch");
  });
});
