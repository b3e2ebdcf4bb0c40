/**
 * `npm run dlq` against a real database holding dead-lettered jobs: list, show, retry (the same
 * rules as POST /jobs/{id}/retry), and the dead-letter gauge per failure code on GET /metrics.
 */
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { dlqMain, listDeadLetters, retryJobs, showJob } from "../../src/ops/dlq.ts";
import { UsageError } from "../../src/ops/cli.ts";
import type { JobStatus } from "../../src/state-machine/table.ts";
import { makeApp, serviceBearer, useTestApp } from "../api/helpers.ts";
import { jobRow, seedJob, type SeededJob } from "../support/fixtures.ts";

const ctx = useTestApp();

/** A job that reached `from` and was dead-lettered into `failed` with `code`, `ageSeconds` ago. */
async function deadLetter(from: JobStatus, failed: JobStatus, code: string, ageSeconds = 60): Promise<SeededJob> {
  const job = await seedJob(ctx.db.pool, { status: from });
  await ctx.db.pool.query(
    `WITH moved AS (UPDATE upload_pipeline.upload_jobs SET status = $2, attempts = 5,
                      last_error = jsonb_build_object('class', 'permanent', 'code', $3::text, 'message', 'it broke: ' || $3, 'stage', $4::text)
                     WHERE job_id = $1 RETURNING job_id)
     INSERT INTO upload_pipeline.job_events (job_id, from_status, to_status, worker_id, attempt, at)
     SELECT job_id, $4, $2, 'w1', 5, now() - make_interval(secs => $5) FROM moved`,
    [job.jobId, failed, code, from, ageSeconds],
  );
  return job;
}

function run(argv: string[]) {
  const lines: string[] = [];
  return dlqMain(argv, { DATABASE_URL: ctx.db.url }, (l) => lines.push(l)).then((code) => ({ code, out: lines.join("\n") }));
}

describe("npm run dlq", () => {
  it("lists dead-lettered jobs, by stage and by age, with their error code", async () => {
    const emb = await deadLetter("embedding_in_progress", "failed_embedding", "insufficient_quota");
    const parse = await deadLetter("parse_queued", "failed_parse", "parse_failed", 7200);
    const running = await seedJob(ctx.db.pool, { status: "chunking" });

    const all = await listDeadLetters(ctx.db.pool);
    const ids = all.map((r) => r.document_id);
    expect(ids).toEqual(expect.arrayContaining([emb.documentId, parse.documentId]));
    expect(ids).not.toContain(running.documentId);
    expect(all.find((r) => r.document_id === emb.documentId)).toMatchObject({ status: "failed_embedding", code: "insufficient_quota", attempts: 5 });

    const embOnly = await listDeadLetters(ctx.db.pool, { stage: "embedding" });
    expect(embOnly.every((r) => r.status === "failed_embedding")).toBe(true);
    expect(embOnly.map((r) => r.document_id)).toContain(emb.documentId);
    const recent = (await listDeadLetters(ctx.db.pool, { sinceSeconds: 3600 })).map((r) => r.document_id);
    expect(recent).toContain(emb.documentId);
    expect(recent).not.toContain(parse.documentId);

    const printed = await run(["list", "--stage", "embedding", "--since", "1h"]);
    expect(printed.code).toBe(0);
    expect(printed.out).toMatch(new RegExp(`${emb.documentId}\\s+failed_embedding\\s+insufficient_quota\\s+5`));
  });

  it("shows a job: last error, events and what the buffers hold", async () => {
    const job = await deadLetter("embedding_in_progress", "failed_embedding", "vector_sha_mismatch");
    await ctx.db.pool.query(
      `INSERT INTO upload_pipeline.document_chunk_buffer (chunk_id, document_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha, token_count)
       VALUES ($1, $2, 'md-heading-token', '1.0.0', 0, 'x', repeat('a', 64), 1)`,
      [randomUUID(), job.documentId],
    );
    const shown = await showJob(ctx.db.pool, job.documentId);
    expect(shown!.job).toMatchObject({ status: "failed_embedding", last_error: { code: "vector_sha_mismatch" } });
    expect(shown!.job).not.toHaveProperty("webhook_secret");
    expect(shown!.events.at(-1)).toMatchObject({ from_status: "embedding_in_progress", to_status: "failed_embedding" });
    expect(shown!.buffers).toEqual({ chunks: [{ chunker: "md-heading-token 1.0.0", chunks: 1 }], vectors: [] });
    expect(await showJob(ctx.db.pool, randomUUID())).toBeUndefined();
  });

  it("retries by the API's rules: back to the last state reached, attempts reset, an operator event", async () => {
    const job = await deadLetter("embedding_in_progress", "failed_embedding", "insufficient_quota");
    const printed = await run(["retry", job.documentId]);
    expect(printed).toEqual({ code: 0, out: `${job.documentId}: retried failed_embedding → embedding_in_progress` });
    expect(await jobRow(ctx.db.pool, job.jobId)).toMatchObject({ status: "embedding_in_progress", attempts: 0, last_error: null });
    const { rows } = await ctx.db.pool.query("SELECT to_status, detail FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id DESC LIMIT 1", [
      job.jobId,
    ]);
    expect(rows[0]).toMatchObject({ to_status: "embedding_in_progress", detail: { retried_from: "failed_embedding", requested_by: "dlq-cli" } });

    // The same job is no longer failed: refused exactly as the API refuses it, nothing changes.
    const again = await run(["retry", job.jobId]);
    expect(again.code).toBe(1);
    expect(again.out).toContain("refused (not_failed): The job is in 'embedding_in_progress'");
    const api = await ctx.t.app.inject({ method: "POST", url: `/jobs/${job.documentId}/retry`, headers: await serviceBearer() });
    expect(api.statusCode).toBe(409);
    expect(api.json().error.code).toBe("not_failed");
    expect((await run(["retry", randomUUID()])).code).toBe(1);
  });

  it("--all --stage S --dry-run says what it would do and changes nothing; without --dry-run it retries them all", async () => {
    const jobs = [await deadLetter("parsed", "failed_parse", "parse_empty"), await deadLetter("uploaded", "failed_parse", "raw_mismatch")];
    const before = await Promise.all(jobs.map((j) => jobRow(ctx.db.pool, j.jobId)));
    const dry = await run(["retry", "--all", "--stage", "parse", "--dry-run"]);
    expect(dry.code).toBe(0);
    // A failed parse is retried from uploaded whatever state it failed in: a new parse.
    expect(dry.out).toContain(`${jobs[0]!.documentId}: would retry failed_parse → uploaded`);
    expect(dry.out).toContain(`${jobs[1]!.documentId}: would retry failed_parse → uploaded`);
    expect(await Promise.all(jobs.map((j) => jobRow(ctx.db.pool, j.jobId)))).toEqual(before);

    const real = await run(["retry", "--all", "--stage", "parse"]);
    expect(real.code).toBe(0);
    expect((await listDeadLetters(ctx.db.pool, { stage: "parse" })).length).toBe(0);
    expect((await jobRow(ctx.db.pool, jobs[0]!.jobId)).status).toBe("uploaded");
    expect((await retryJobs(ctx.db.pool, [jobs[1]!.documentId])).map((l) => l.ok)).toEqual([false]);
  });

  it("refuses a bad command, flag or id with a message naming it, touching nothing", async () => {
    await expect(run(["list", "--stage", "embeding"])).rejects.toThrow(new UsageError("--stage takes parse, chunking or embedding (got 'embeding')"));
    await expect(run(["list", "--since", "yesterday"])).rejects.toThrow(/--since takes a duration such as 90s, 30m, 1h or 30d/);
    await expect(run(["retry", "--all"])).rejects.toThrow(/retry --all needs --stage/);
    await expect(run(["retry", "not-a-uuid"])).rejects.toThrow(/'not-a-uuid' is not a document_id or job_id/);
    await expect(run(["frobnicate"])).rejects.toThrow(/unknown command 'frobnicate'/);
    await expect(dlqMain(["list"], {})).rejects.toThrow(/DATABASE_URL is not set/);

    const child = spawnSync(process.execPath, ["src/ops/dlq.ts", "list", "--bogus"], {
      env: { ...process.env, DATABASE_URL: ctx.db.url },
      encoding: "utf8",
      timeout: 30_000,
    });
    expect(child.status).toBe(2);
    expect(child.stderr).toContain("Unknown option '--bogus'");
    expect(child.stderr).toContain("Usage:");
    expect(child.stderr).not.toMatch(/\n\s+at /);
  });

  it("GET /metrics counts dead-lettered jobs per state and failure code", async () => {
    await deadLetter("chunking", "failed_chunking", "chunk_verify_failed");
    await deadLetter("chunking", "failed_chunking", "chunk_verify_failed");
    const { app } = await makeApp(ctx.db.pool);
    const body = (await app.inject({ method: "GET", url: "/metrics" })).body;
    await app.close();
    expect(body).toMatch(/^upload_pipeline_dead_letter_jobs\{state="failed_chunking",code="chunk_verify_failed"\} 2$/m);
    expect(body).toMatch(/^upload_pipeline_dead_letter_jobs\{state="failed_embedding",code="insufficient_quota"\} 1$/m);
  });
});
