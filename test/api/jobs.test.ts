/**
 * GET /jobs/{document_id} (state, progress from the buffers, errors, cost, timeline) and
 * POST /jobs/{document_id}/retry (from failed_* only, back where the job failed, attempts reset,
 * buffers kept).
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { chunkId, sha256 } from "../../src/ids.ts";
import { useTestApp, bearer, seedJob, serviceBearer, snapshot } from "./helpers.ts";

const ctx = useTestApp();

async function addChunks(documentId: string, n: number, vectors: number) {
  for (let ord = 0; ord < n; ord++) {
    const id = chunkId(documentId, "md", "1", ord);
    await ctx.db.pool.query(
      `INSERT INTO upload_pipeline.document_chunk_buffer (chunk_id, document_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha, token_count)
       VALUES ($1, $2, 'md', '1', $3, $4, $5, 3)`,
      [id, documentId, ord, `chunk ${ord}`, sha256(`chunk ${ord}`)],
    );
    if (ord < vectors) {
      await ctx.db.pool.query(
        `INSERT INTO upload_pipeline.document_vector_buffer (chunk_id, embed_model, embed_version, embedding, vector_sha, batch_id)
         VALUES ($1, 'text-embedding-3-small', 'd3', '{0.1,0.2,0.3}', $2, $3)`,
        [id, sha256(`v ${ord}`), randomUUID()],
      );
    }
  }
}

const get = async (documentId: string, userId: string) => ctx.t.app.inject({ method: "GET", url: `/jobs/${documentId}`, headers: await bearer(userId) });
const retry = async (documentId: string, userId: string) =>
  ctx.t.app.inject({ method: "POST", url: `/jobs/${documentId}/retry`, headers: await bearer(userId) });

describe("GET /jobs/{document_id}", () => {
  it("reports state, per-stage progress from buffer counts, cost and the timeline", async () => {
    const job = await seedJob(ctx.db.pool, { status: "embedding_in_progress" });
    await ctx.db.pool.query(
      `UPDATE upload_pipeline.upload_jobs SET progress = progress || '{"chunks_total": 4, "chunks_done": 4, "vectors_total": 4, "vectors_done": 1, "batches_done": 1, "tokens": 120, "cost_usd": 0.0000024}'::jsonb WHERE job_id = $1`,
      [job.jobId],
    );
    await addChunks(job.documentId, 4, 1);
    const res = await get(job.documentId, job.userId);
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({
      document_id: job.documentId,
      job_id: job.jobId,
      status: "embedding_in_progress",
      document: { filename: "doc.pdf", mime: "application/pdf", bytes: 10 },
      last_error: null,
      progress: {
        stages: [
          { stage: "parse", state: "done" },
          { stage: "chunking", state: "done" },
          { stage: "embedding", state: "in_progress" },
        ],
        chunks: { stored: 4, total: 4, percent: 100 },
        vectors: { stored: 1, total: 4, percent: 25 },
        batches_done: 1,
      },
      cost: { tokens: 120, cost_usd: 0.0000024 },
    });
    expect(body.timeline.map((e: { from: string | null; to: string }) => `${e.from}→${e.to}`)).toEqual([
      "null→uploaded",
      "uploaded→parse_queued",
      "parse_queued→parsed",
      "parsed→parse_validated",
      "parse_validated→chunking",
      "chunking→chunks_stored",
      "chunks_stored→embedding_queued",
      "embedding_queued→embedding_in_progress",
    ]);
    expect(body.timeline[0]).toMatchObject({ actor: "api", attempt: 0 });
    expect(body).not.toHaveProperty("webhook_secret");
    expect(res.body).not.toContain(job.secret);
  });

  it("shows the owner neither worker ids nor raw event detail; the service role sees both", async () => {
    const job = await seedJob(ctx.db.pool, { status: "parse_queued" });
    const owner = await get(job.documentId, job.userId);
    const ownerTimeline = owner.json().timeline as Array<Record<string, unknown>>;
    expect(ownerTimeline.length).toBe(2);
    for (const event of ownerTimeline) {
      expect(Object.keys(event).sort()).toEqual(["actor", "at", "attempt", "from", "id", "to"]);
    }
    expect(owner.body).not.toContain("test-worker");
    expect(owner.body).not.toContain(job.parseJobId);

    const operator = await ctx.t.app.inject({ method: "GET", url: `/jobs/${job.documentId}`, headers: await serviceBearer() });
    const operatorTimeline = operator.json().timeline as Array<Record<string, unknown>>;
    expect(operatorTimeline[1]).toMatchObject({ to: "parse_queued", worker_id: "test-worker", detail: { actor: "worker" } });
  });

  it("shows last_error and the failed stage", async () => {
    const job = await seedJob(ctx.db.pool, { status: "failed_chunking", failedFrom: "chunking" });
    const body = (await get(job.documentId, job.userId)).json();
    expect(body.status).toBe("failed_chunking");
    expect(body.last_error).toMatchObject({ class: "permanent", code: "test_failure", stage: "chunking" });
    expect(body.progress.stages).toEqual([
      { stage: "parse", state: "done" },
      { stage: "chunking", state: "failed" },
      { stage: "embedding", state: "pending" },
    ]);
  });

  it("a document awaiting its signed upload has status null", async () => {
    const user = randomUUID();
    const res = await ctx.t.app.inject({
      method: "POST",
      url: "/upload",
      headers: { "content-type": "application/json", ...(await bearer(user)) },
      payload: JSON.stringify({ filename: "a.pdf", mime: "application/pdf", bytes: 3, sha256: sha256(randomUUID()) }),
    });
    const body = (await get(res.json().document_id, user)).json();
    expect(body).toMatchObject({ status: null, timeline: [], progress: { chunks: { stored: 0, total: 0, percent: 0 } } });
  });

  it("answers 404 for an unknown document and 400 for a malformed id", async () => {
    expect((await get(randomUUID(), randomUUID())).statusCode).toBe(404);
    const bad = await get("123", randomUUID());
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.message).toContain("document_id");
  });
});

describe("POST /jobs/{document_id}/retry", () => {
  it.each([
    ["failed_chunking", "chunking"],
    ["failed_embedding", "embedding_in_progress"],
  ] as const)("from %s goes back to %s, resets attempts, clears last_error, keeps the buffers", async (failed, from) => {
    const job = await seedJob(ctx.db.pool, { status: failed, failedFrom: from });
    await addChunks(job.documentId, 3, 2);
    const res = await retry(job.documentId, job.userId);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toEqual({ document_id: job.documentId, job_id: job.jobId, status: from, retried_from: failed, attempts: 0 });
    const { rows } = await ctx.db.pool.query(
      "SELECT status, attempts, last_error, locked_by, next_attempt_at <= now() AS due FROM upload_pipeline.upload_jobs WHERE job_id = $1",
      [job.jobId],
    );
    expect(rows[0]).toEqual({ status: from, attempts: 0, last_error: null, locked_by: null, due: true });
    const ev = await ctx.db.pool.query(
      "SELECT from_status, to_status, lease_token, detail FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id DESC LIMIT 1",
      [job.jobId],
    );
    expect(ev.rows[0]).toMatchObject({ from_status: failed, to_status: from, lease_token: null, detail: { actor: "operator", retried_from: failed } });
    const chunks = await ctx.db.pool.query("SELECT count(*) FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1", [job.documentId]);
    expect(chunks.rows[0].count).toBe("3");
  });

  it.each(["uploaded", "parse_queued", "parsed"] as const)(
    "a manual retry after failed parse re-parses: from failed_parse (failed in %s) back to uploaded, the old submission forgotten",
    async (failedFrom) => {
      const job = await seedJob(ctx.db.pool, { status: "failed_parse", failedFrom });
      const intent = { started_at: new Date().toISOString(), submission: randomUUID() };
      await ctx.db.pool.query("UPDATE upload_pipeline.upload_jobs SET progress = progress || jsonb_build_object('parse_submit', $2::jsonb) WHERE job_id = $1", [
        job.jobId,
        intent,
      ]);
      const res = await retry(job.documentId, job.userId);
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json()).toMatchObject({ status: "uploaded", retried_from: "failed_parse", attempts: 0 });
      const { rows } = await ctx.db.pool.query("SELECT status, attempts, last_error, progress FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.jobId]);
      expect(rows[0]).toMatchObject({ status: "uploaded", attempts: 0, last_error: null });
      expect(rows[0].progress.parse_submit).toBeNull();
    },
  );

  it("is refused with 409 unless the job is in a failed_* state, and changes nothing", async () => {
    for (const status of ["uploaded", "parse_queued", "chunks_stored", "complete"] as const) {
      const job = await seedJob(ctx.db.pool, { status });
      const before = await snapshot(ctx.db.pool);
      const res = await retry(job.documentId, job.userId);
      expect(res.statusCode).toBe(409);
      expect(res.json().error).toMatchObject({ code: "not_failed", message: expect.stringContaining(status) });
      expect(await snapshot(ctx.db.pool)).toEqual(before);
    }
  });

  it("a second retry of the same failure is 409 (the first already moved it)", async () => {
    const job = await seedJob(ctx.db.pool, { status: "failed_parse", failedFrom: "parsed" });
    const answers = await Promise.all([retry(job.documentId, job.userId), retry(job.documentId, job.userId)]);
    expect(answers.map((a) => a.statusCode).sort()).toEqual([200, 409]);
    const { rows } = await ctx.db.pool.query("SELECT count(*) FROM upload_pipeline.job_events WHERE job_id = $1 AND detail->>'actor' = 'operator'", [
      job.jobId,
    ]);
    expect(rows[0].count).toBe("1");
  });
});
