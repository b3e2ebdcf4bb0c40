/**
 * Stage idempotency: each stage, run once, run twice, or crashed at any of the points it passes
 * (once or several times) and run again, leaves the same rows behind. Rows are compared as a
 * canonical snapshot of the job's document, chunks, vectors and job status/progress, with the
 * run-specific ids (user, document, job) replaced by placeholders and timestamps, lease columns
 * and event ids left out.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chunkId } from "../../src/ids.ts";
import { PIPELINE_STAGES } from "../../src/stages/index.ts";
import { isTerminal, type JobStatus } from "../../src/state-machine/table.ts";
import type { FaultRule } from "../../src/worker/faultPoints.ts";
import { CONTENTS, forgetUsers, named, PAST_LEASE_MS, parseJobsFor, startPropertyEnv, step, type Content, type PropertyEnv } from "./harness.ts";
import { checkProperty, timeoutFor } from "./settings.ts";
import { randomUUID } from "node:crypto";

const FILE = "test/property/stages.idempotency.test.ts";
const DEFAULT_RUNS = 18;

let p: PropertyEnv;
beforeAll(async () => {
  p = await startPropertyEnv(23);
}, 120_000);
afterAll(() => p?.close());

interface StageInfo {
  name: string;
  /** The state the stage starts from. */
  entry: JobStatus;
  /** Every state the stage acts on: the job has left the stage when it is in none of them. */
  handles: readonly JobStatus[];
}

const STAGES: StageInfo[] = PIPELINE_STAGES.map((s) => named({ name: s.name, entry: s.handles[0]!, handles: s.handles }, s.name));
const CLEAN = CONTENTS.filter((c) => !c.poison);

interface Ids {
  userId: string;
  documentId: string;
  jobId: string;
}

async function statusOf(jobId: string): Promise<JobStatus> {
  const { rows } = await p.env.db.pool.query("SELECT status FROM upload_pipeline.upload_jobs WHERE job_id = $1", [jobId]);
  return rows[0].status;
}

/** A new job for `content`, taken crash-free to the stage's entry state, with no live lease. */
async function bringTo(content: Content, stage: StageInfo): Promise<Ids> {
  const userId = randomUUID();
  const ids = { userId, ...(await p.env.upload({ content: content.text, userId })) };
  for (let i = 0; i < 40; i++) {
    const status = await statusOf(ids.jobId);
    if (status === stage.entry) {
      await p.clock.advance(PAST_LEASE_MS); // the stopped worker's lease lapses
      return ids;
    }
    if (isTerminal(status)) throw new Error(`setup: job ended ${status} before reaching ${stage.entry}`);
    const { job } = await step(p, p.clock, { crash: { point: `stage.${stage.name}.before` } });
    if (!job) await p.clock.advance(PAST_LEASE_MS);
  }
  throw new Error(`setup: job never reached ${stage.entry}`);
}

/**
 * Step the job until it has left the stage, stopping each worker at the end of the stage.
 * Returns how many fault points the last claim passed (the stage's points, from claim.after on).
 */
async function finishStage(ids: Ids, stage: StageInfo): Promise<number> {
  const stopAfter: FaultRule = { point: `stage.${stage.name}.after`, action: "crash" };
  let points = 0;
  for (let i = 0; i < 40; i++) {
    if (!stage.handles.includes(await statusOf(ids.jobId))) {
      await p.clock.advance(PAST_LEASE_MS);
      return points;
    }
    const { job, faults } = await step(p, p.clock, { rules: [stopAfter] });
    if (!job) await p.clock.advance(PAST_LEASE_MS);
    else points = faults.inner.seen.length;
  }
  throw new Error(`stage ${stage.name} never finished`);
}

/** How the stage is run in a variant; `picks` choose crash points modulo the stage's point count. */
type Variant = { kind: "twice" } | { kind: "crashes"; picks: number[] };

async function runStage(ids: Ids, stage: StageInfo, variant: Variant | { kind: "once" }, points = 1): Promise<{ crashedAt: string[]; points: number }> {
  const crashedAt: string[] = [];
  if (variant.kind === "crashes") {
    for (const pick of variant.picks) {
      const kth = 1 + (pick % points);
      if (!stage.handles.includes(await statusOf(ids.jobId))) break;
      // Crash at the kth point this claim passes (claim.after is the first), unless the stage ends first.
      const { faults } = await step(p, p.clock, { crash: { point: /./, nth: kth }, rules: [{ point: `stage.${stage.name}.after`, action: "crash" }] });
      if (faults.crashedAt) crashedAt.push(faults.crashedAt);
      await p.clock.advance(PAST_LEASE_MS);
    }
  }
  const passed = await finishStage(ids, stage);
  if (variant.kind === "twice") {
    // Enter the stage again with everything it wrote in place (as an operator retry would send
    // the job back to it): a direct write, for the test only.
    await p.env.db.pool.query(
      "UPDATE upload_pipeline.upload_jobs SET status = $2, locked_by = NULL, lease_token = NULL, lease_expires_at = NULL WHERE job_id = $1",
      [ids.jobId, stage.entry],
    );
    await finishStage(ids, stage);
  }
  return { crashedAt, points: passed };
}

/** The job's rows, canonical: ids as placeholders, no timestamps, lease columns or event ids. */
async function snapshot(ids: Ids): Promise<unknown> {
  const pool = p.env.db.pool;
  const doc = await pool.query(
    `SELECT filename, mime, bytes, file_sha256, raw_path, parsed_path, parsed_sha256, normalized_sha256
       FROM upload_pipeline.documents WHERE document_id = $1`,
    [ids.documentId],
  );
  const chunks = await pool.query(
    `SELECT chunk_id, chunker_name, chunker_version, chunk_ord, chunk_sha, md5(text) AS text_md5, token_count, meta
       FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1 ORDER BY chunk_ord, chunk_id`,
    [ids.documentId],
  );
  const vectors = await pool.query(
    `SELECT c.chunk_ord, v.embed_model, v.embed_version, v.vector_sha, v.batch_id, md5(v.embedding::text) AS embedding_md5
       FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
      WHERE c.document_id = $1 ORDER BY c.chunk_ord, v.embed_model`,
    [ids.documentId],
  );
  const job = await pool.query(
    `SELECT status, progress, last_error, parse_job_id IS NOT NULL AS has_parse_job, webhook_secret IS NOT NULL AS has_secret
       FROM upload_pipeline.upload_jobs WHERE job_id = $1`,
    [ids.jobId],
  );
  const progress = { ...job.rows[0].progress };
  if (progress.parse_submit) progress.parse_submit = { ...progress.parse_submit, started_at: "<time>", submission: "<random>" };
  // A batch id names the batch by its first chunk: show it as that chunk's ord.
  const batchFirst = new Map<string, number>();
  for (const v of vectors.rows) if (!batchFirst.has(v.batch_id)) batchFirst.set(v.batch_id, v.chunk_ord);
  const snap = {
    document: doc.rows[0],
    chunks: chunks.rows.map((c) => ({
      ...c,
      chunk_id: c.chunk_id === chunkId(ids.documentId, c.chunker_name, c.chunker_version, c.chunk_ord) ? "<derived>" : c.chunk_id,
    })),
    vectors: vectors.rows.map((v) => ({ ...v, batch_id: `batch@${batchFirst.get(v.batch_id)}` })),
    job: { ...job.rows[0], progress },
    llamaparse_jobs: parseJobsFor(p, ids.jobId),
  };
  return JSON.parse(JSON.stringify(snap).replaceAll(ids.documentId, "<document>").replaceAll(ids.jobId, "<job>").replaceAll(ids.userId, "<user>"));
}

/** The snapshot of a stage run once, crash-free, per (stage, content), and how many points it passed. */
const once = new Map<string, { snapshot: unknown; points: number }>();
async function runOnce(stage: StageInfo, content: Content): Promise<{ snapshot: unknown; points: number }> {
  const key = `${stage.name}/${content.name}`;
  if (!once.has(key)) {
    const ids = await bringTo(content, stage);
    const { points } = await runStage(ids, stage, { kind: "once" });
    once.set(key, { snapshot: await snapshot(ids), points });
    await forgetUsers(p, [ids.userId]);
  }
  return once.get(key)!;
}

const variant: fc.Arbitrary<Variant> = fc.oneof(
  fc.constant<Variant>({ kind: "twice" }),
  fc.array(fc.nat({ max: 63 }), { minLength: 1, maxLength: 3 }).map((picks): Variant => ({ kind: "crashes", picks })),
);

describe("stage idempotency", () => {
  // For every stage, running it twice, or crashing it at any points it passes and running it again, leaves exactly the rows that running it once leaves.
  it(
    "a stage run twice or crashed and resumed writes what one run writes",
    async () => {
      await checkProperty(
        fc.asyncProperty(fc.constantFrom(...STAGES), fc.constantFrom(...CLEAN), variant, async (stage, content, v) => {
          const expected = await runOnce(stage, content);
          const ids = await bringTo(content, stage);
          try {
            const { crashedAt } = await runStage(ids, stage, v, expected.points);
            // A crash variant first proves its crash happened: the first pick is always reached,
            // since the job is inside the stage and the point is one a clean run passes.
            if (v.kind === "crashes") expect(crashedAt.length).toBeGreaterThan(0);
            expect(await snapshot(ids)).toEqual(expected.snapshot);
          } finally {
            await forgetUsers(p, [ids.userId]);
          }
        }),
        { name: "a stage run twice or crashed and resumed writes what one run writes", file: FILE, defaultRuns: DEFAULT_RUNS },
      );
    },
    timeoutFor(DEFAULT_RUNS, 3_000),
  );
});
