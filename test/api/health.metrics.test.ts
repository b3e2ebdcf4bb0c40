/**
 * GET /healthz (database up and schema current, else 503) and GET /metrics (the families, with
 * figures read from the database; no label carries an id or a secret).
 */
import { randomUUID } from "node:crypto";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { useTestApp, bearer, makeApp, parseEvent, seedJob, webhookRequest } from "./helpers.ts";

const ctx = useTestApp();

describe("GET /healthz", () => {
  it("is 200 when the database answers and every migration is applied", async () => {
    const res = await ctx.t.app.inject({ method: "GET", url: "/healthz" });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ status: "ok", database: "up", migrations: { current: true } });
  });

  it("is 503 when the schema is behind the code", async () => {
    const { rows } = await ctx.db.pool.query("SELECT max(id) AS id FROM upload_pipeline.migrations");
    const latest = rows[0].id;
    const saved = (await ctx.db.pool.query("SELECT * FROM upload_pipeline.migrations WHERE id = $1", [latest])).rows[0];
    await ctx.db.pool.query("DELETE FROM upload_pipeline.migrations WHERE id = $1", [latest]);
    try {
      const res = await ctx.t.app.inject({ method: "GET", url: "/healthz" });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toMatchObject({ status: "unavailable", database: "up", migrations: { current: false } });
    } finally {
      await ctx.db.pool.query("INSERT INTO upload_pipeline.migrations (id, name, applied_at) VALUES ($1, $2, $3)", [saved.id, saved.name, saved.applied_at]);
    }
  });

  it("is 503 when the database is unreachable", async () => {
    const dead = new pg.Pool({ connectionString: "postgres://postgres:postgres@127.0.0.1:1/postgres", connectionTimeoutMillis: 500 });
    const down = await makeApp(dead);
    try {
      const res = await down.app.inject({ method: "GET", url: "/healthz" });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toMatchObject({ status: "unavailable", database: "down" });
      expect(res.body).not.toContain("postgres:postgres");
    } finally {
      await down.app.close();
      await dead.end();
    }
  });
});

describe("GET /metrics", () => {
  it("exposes the families, with jobs by state and webhook outcomes by reason", async () => {
    const job = await seedJob(ctx.db.pool, { status: "parse_queued" });
    await seedJob(ctx.db.pool, { status: "failed_embedding" });
    await ctx.db.pool.query(`UPDATE upload_pipeline.upload_jobs SET progress = progress || '{"tokens": 500, "cost_usd": 0.01}'::jsonb WHERE job_id = $1`, [
      job.jobId,
    ]);
    await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId, { event_type: "parse.pending" }), job.secret));
    await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId), "wrong-secret"));
    await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId), job.secret, { contentType: "text/plain" }));
    // Events younger than the settle window are read on a later scrape; age them.
    await ctx.db.pool.query("UPDATE upload_pipeline.job_events SET at = at - interval '1 minute'");

    const res = await ctx.t.app.inject({ method: "GET", url: "/metrics" });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/plain/);
    const text = res.body;
    for (const family of [
      "upload_pipeline_jobs",
      "upload_pipeline_stage_duration_seconds",
      "upload_pipeline_job_failures_total",
      "upload_pipeline_manual_retries_total",
      "upload_pipeline_jobs_retry_scheduled",
      "upload_pipeline_embedding_tokens",
      "upload_pipeline_cost_usd",
      "upload_pipeline_webhook_deliveries_total",
    ]) {
      expect(text).toContain(`# TYPE ${family} `);
    }
    expect(text).toContain('upload_pipeline_jobs{state="parse_queued"} 1');
    expect(text).toContain('upload_pipeline_jobs{state="failed_embedding"} 1');
    expect(text).toContain('upload_pipeline_jobs{state="complete"} 0');
    expect(text).toContain('upload_pipeline_webhook_deliveries_total{reason="accepted"} 1');
    expect(text).toContain('upload_pipeline_webhook_deliveries_total{reason="forged"} 1');
    expect(text).toContain('upload_pipeline_webhook_deliveries_total{reason="wrong_content_type"} 1');
    expect(text).toContain('upload_pipeline_webhook_deliveries_total{reason="early"} 0');
    expect(text).toContain('upload_pipeline_job_failures_total{state="failed_embedding"} 1');
    expect(text).toContain("upload_pipeline_embedding_tokens 500");
    expect(text).toContain("upload_pipeline_cost_usd 0.01");
    expect(text).toMatch(/upload_pipeline_stage_duration_seconds_count\{stage="uploaded"\} 2/);
    // No label carries an id or a secret.
    expect(text).not.toContain(job.jobId);
    expect(text).not.toContain(job.userId);
    expect(text).not.toContain(job.secret);
    expect(text).not.toContain(job.parseJobId);
  });

  it("counts each event once across scrapes, and manual retries", async () => {
    const failed = await seedJob(ctx.db.pool, { status: "failed_parse" });
    await ctx.t.app.inject({ method: "POST", url: `/jobs/${failed.documentId}/retry`, headers: await bearer(failed.userId) });
    await ctx.db.pool.query("UPDATE upload_pipeline.job_events SET at = at - interval '1 minute'");
    const scrape = async () => (await ctx.t.app.inject({ method: "GET", url: "/metrics" })).body;
    const first = await scrape();
    const second = await scrape();
    const count = (text: string) => Number(/upload_pipeline_stage_duration_seconds_count\{stage="uploaded"\} (\d+)/.exec(text)?.[1]);
    expect(count(second)).toBe(count(first));
    expect(second).toContain("upload_pipeline_manual_retries_total 1");
  });
});

describe("GET /metrics with METRICS_TOKEN", () => {
  const METRICS_TOKEN = "scrape-secret-0123456789";
  it("answers only the bearer token: 401 without it or with another, 200 with it (any case of 'Bearer')", async () => {
    const guarded = await makeApp(ctx.db.pool, { configOverrides: { METRICS_TOKEN } });
    try {
      const scrape = (headers: Record<string, string> = {}) => guarded.app.inject({ method: "GET", url: "/metrics", headers });
      const none = await scrape();
      expect(none.statusCode).toBe(401);
      expect(none.json().error.code).toBe("unauthorized");
      expect(none.json().error.message).toContain("METRICS_TOKEN");
      expect(none.body).not.toContain(METRICS_TOKEN);
      expect((await scrape({ authorization: "Bearer wrong-secret-0123456789" })).statusCode).toBe(401);
      // A user's JWT is not the metrics token.
      expect((await scrape(await bearer(randomUUID()))).statusCode).toBe(401);
      const ok = await scrape({ authorization: `bearer ${METRICS_TOKEN}` });
      expect(ok.statusCode).toBe(200);
      expect(ok.body).toContain("upload_pipeline_jobs");
      // /healthz stays open for the load balancer.
      expect((await guarded.app.inject({ method: "GET", url: "/healthz" })).statusCode).toBe(200);
    } finally {
      await guarded.app.close();
    }
  });
});
