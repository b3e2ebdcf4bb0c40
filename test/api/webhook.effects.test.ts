/**
 * What an accepted LlamaParse delivery does: success is handed to parse intake after the
 * answer, error/cancelled fail the parse, pending/running are only recorded, and a job that
 * has moved on is left alone.
 */
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/logger.ts";
import { JOB_ID_HEADER } from "../../src/stages/submitParse.ts";
import { until } from "../support/until.ts";
import { useTestApp, makeApp, parseEvent, seedJob, webhookRequest } from "./helpers.ts";

const ctx = useTestApp();

const status = async (jobId: string) =>
  (await ctx.db.pool.query("SELECT status, last_error, lease_token FROM upload_pipeline.upload_jobs WHERE job_id = $1", [jobId])).rows[0];
const logRow = async (eventId: string) => (await ctx.db.pool.query("SELECT * FROM upload_pipeline.webhook_log WHERE delivery_key = $1", [eventId])).rows[0];

describe("webhook: accepted deliveries", () => {
  it("parse.success is recorded and handed to intake with the job's ids, after the answer", async () => {
    const job = await seedJob(ctx.db.pool);
    const event = parseEvent(job.parseJobId);
    const res = await ctx.t.app.inject(webhookRequest(event, job.secret));
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ received: true, outcome: "handed_off" });
    await ctx.t.app.deps.parseIntakes.settled();
    expect(ctx.t.intake.at(-1)).toMatchObject({
      jobId: job.jobId,
      documentId: job.documentId,
      parseJobId: job.parseJobId,
      eventId: event.event_id,
      eventType: "parse.success",
    });
    expect(await logRow(event.event_id)).toMatchObject({ job_id: job.jobId, parse_job_id: job.parseJobId, event_type: "parse.success", outcome: "handed_off" });
    // The webhook itself moves nothing on success: intake does.
    expect((await status(job.jobId)).status).toBe("parse_queued");
  });

  it("finds the job by data.id when data.job_id is absent", async () => {
    const job = await seedJob(ctx.db.pool);
    const res = await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId, { data: { id: job.parseJobId } }), job.secret));
    expect(res.statusCode).toBe(200);
  });

  it("parse.partial_success is handed to intake like parse.success (intake decides what a failed page means)", async () => {
    const job = await seedJob(ctx.db.pool);
    const event = parseEvent(job.parseJobId, { event_type: "parse.partial_success" });
    const res = await ctx.t.app.inject(webhookRequest(event, job.secret));
    expect(res.json()).toEqual({ received: true, outcome: "handed_off" });
    await ctx.t.app.deps.parseIntakes.settled();
    expect(ctx.t.intake.at(-1)).toMatchObject({ jobId: job.jobId, eventId: event.event_id, eventType: "parse.partial_success" });
  });

  it.each(["parse.success", "parse.partial_success", "parse.error", "parse.cancelled"])(
    "%s for a job whose submission has not committed parse_queued yet is kept as early (202) and changes nothing",
    async (eventType) => {
      const job = await seedJob(ctx.db.pool, { status: "uploaded" });
      // The submit stage records the secret before it sends the file.
      await ctx.db.pool.query("UPDATE upload_pipeline.upload_jobs SET webhook_secret = $2 WHERE job_id = $1", [job.jobId, job.secret]);
      const event = parseEvent(job.parseJobId, { event_type: eventType });
      const res = await ctx.t.app.inject(webhookRequest(event, job.secret, { headers: { [JOB_ID_HEADER]: job.jobId } }));
      expect(res.statusCode).toBe(202);
      expect(res.json()).toEqual({ received: true, outcome: "early" });
      expect(await logRow(event.event_id)).toMatchObject({ parse_job_id: job.parseJobId, outcome: "early" });
      expect(await status(job.jobId)).toMatchObject({ status: "uploaded", last_error: null });
    },
  );

  it("data.job_id names the parse job when data.id differs from it", async () => {
    const job = await seedJob(ctx.db.pool);
    const event = parseEvent(job.parseJobId, { data: { job_id: job.parseJobId, id: `evt-object-${job.parseJobId}` } });
    const res = await ctx.t.app.inject(webhookRequest(event, job.secret, { headers: { [JOB_ID_HEADER]: job.jobId } }));
    expect(res.json()).toEqual({ received: true, outcome: "handed_off" });
  });

  it.each(["parse.error", "parse.cancelled"])("%s moves parse_queued → failed_parse (actor webhook, no lease)", async (eventType) => {
    const job = await seedJob(ctx.db.pool);
    const event = parseEvent(job.parseJobId, { event_type: eventType });
    const res = await ctx.t.app.inject(webhookRequest(event, job.secret));
    expect(res.json()).toEqual({ received: true, outcome: "failed_parse" });
    const row = await status(job.jobId);
    expect(row.status).toBe("failed_parse");
    expect(row.last_error).toMatchObject({
      class: "permanent",
      stage: "parse_queued",
      code: eventType === "parse.error" ? "llamaparse_failed" : "llamaparse_cancelled",
    });
    const { rows } = await ctx.db.pool.query(
      "SELECT from_status, to_status, worker_id, lease_token, detail FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id DESC LIMIT 1",
      [job.jobId],
    );
    expect(rows[0]).toMatchObject({
      from_status: "parse_queued",
      to_status: "failed_parse",
      lease_token: null,
      detail: { actor: "webhook", event_id: event.event_id },
    });
  });

  it.each(["parse.pending", "parse.running"])("%s is recorded and changes nothing else", async (eventType) => {
    const job = await seedJob(ctx.db.pool);
    const before = (await ctx.db.pool.query("SELECT * FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.jobId])).rows;
    const event = parseEvent(job.parseJobId, { event_type: eventType });
    const res = await ctx.t.app.inject(webhookRequest(event, job.secret));
    expect(res.json()).toEqual({ received: true, outcome: "recorded" });
    expect((await ctx.db.pool.query("SELECT * FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.jobId])).rows).toEqual(before);
    expect(await logRow(event.event_id)).toMatchObject({ outcome: "recorded" });
  });

  it("a job already past parse_queued is left alone (200, not_applicable, no intake)", async () => {
    const job = await seedJob(ctx.db.pool, { status: "parsed" });
    const n = ctx.t.intake.length;
    for (const eventType of ["parse.success", "parse.error"]) {
      const res = await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId, { event_type: eventType }), job.secret));
      expect(res.json()).toEqual({ received: true, outcome: "not_applicable" });
    }
    await ctx.t.app.deps.parseIntakes.settled();
    expect(ctx.t.intake.length).toBe(n);
    expect((await status(job.jobId)).status).toBe("parsed");
  });

  it("an event of another parse job of the same job (a duplicate submission the submit stage cancelled) is not applied to the parse it waits for", async () => {
    const job = await seedJob(ctx.db.pool);
    const n = ctx.t.intake.length;
    // Routed by our job id header and signed with the job's secret, as every submission of the job is.
    for (const eventType of ["parse.cancelled", "parse.error", "parse.success"]) {
      const event = parseEvent(`pjob-duplicate-${job.parseJobId}`, { event_type: eventType });
      const res = await ctx.t.app.inject(webhookRequest(event, job.secret, { headers: { [JOB_ID_HEADER]: job.jobId } }));
      expect(res.json()).toEqual({ received: true, outcome: "not_applicable" });
    }
    await ctx.t.app.deps.parseIntakes.settled();
    expect(ctx.t.intake.length).toBe(n);
    expect(await status(job.jobId)).toMatchObject({ status: "parse_queued", last_error: null });
  });

  it("a job leased right now (the reconciler) is not failed under it", async () => {
    const job = await seedJob(ctx.db.pool);
    await ctx.db.pool.query(
      "UPDATE upload_pipeline.upload_jobs SET locked_by = 'reconciler', lease_token = gen_random_uuid(), lease_expires_at = now() + interval '1 minute' WHERE job_id = $1",
      [job.jobId],
    );
    const res = await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId, { event_type: "parse.error" }), job.secret));
    expect(res.json()).toEqual({ received: true, outcome: "not_applicable" });
    expect((await status(job.jobId)).status).toBe("parse_queued");
  });

  it("answers before intake finishes; a failing intake is logged, not surfaced, and makes the reconciler due now", async () => {
    const lines: string[] = [];
    let release!: () => void;
    const slow = await makeApp(ctx.db.pool, {
      log: createLogger({ level: "info", destination: { write: (l: string) => lines.push(l) } as unknown as NodeJS.WritableStream }),
      onParseEvent: () => new Promise((_, reject) => (release = () => reject(new Error("llamaparse down")))),
    });
    const job = await seedJob(ctx.db.pool);
    // As the submit stage leaves it: due at its webhook deadline.
    await ctx.db.pool.query("UPDATE upload_pipeline.upload_jobs SET next_attempt_at = now() + interval '120 seconds' WHERE job_id = $1", [job.jobId]);
    const res = await slow.app.inject(webhookRequest(parseEvent(job.parseJobId), job.secret));
    expect(res.statusCode).toBe(200);
    await until("intake to start", () => release !== undefined);
    release();
    await slow.app.close(); // waits for the in-flight intake
    expect(lines.some((l) => l.includes("parse intake failed"))).toBe(true);
    expect(lines.join("\n")).not.toContain(job.secret);
    const { rows } = await ctx.db.pool.query("SELECT next_attempt_at <= now() AS due FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.jobId]);
    expect(rows[0].due).toBe(true);
  });

  it("a failing intake leaves a job that has moved on meanwhile at its own due time", async () => {
    let release!: () => void;
    const slow = await makeApp(ctx.db.pool, {
      log: createLogger({ level: "silent" }),
      onParseEvent: () => new Promise((_, reject) => (release = () => reject(new Error("llamaparse down")))),
    });
    const job = await seedJob(ctx.db.pool);
    const res = await slow.app.inject(webhookRequest(parseEvent(job.parseJobId), job.secret));
    expect(res.statusCode).toBe(200);
    await until("intake to start", () => release !== undefined);
    // Meanwhile the reconciler fetched the result, and validate failed once: it waits out a backoff.
    await ctx.db.pool.query("UPDATE upload_pipeline.upload_jobs SET status = 'parsed', next_attempt_at = now() + interval '60 seconds' WHERE job_id = $1", [
      job.jobId,
    ]);
    release();
    await slow.app.close(); // waits for the in-flight intake and its reconcile
    const { rows } = await ctx.db.pool.query(
      "SELECT next_attempt_at > now() + interval '50 seconds' AS waiting FROM upload_pipeline.upload_jobs WHERE job_id = $1",
      [job.jobId],
    );
    expect(rows[0].waiting).toBe(true);
  });
});
