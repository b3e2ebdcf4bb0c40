/**
 * The webhook's security matrix (SPEC §6): every refused delivery gets its status, and the
 * database (documents, jobs, events, webhook_log) is exactly as it was before.
 */
import { randomUUID } from "node:crypto";
import { beforeEach, describe, expect, it } from "vitest";
import { NO_SECRET, signWebhook } from "../../src/api/routes/webhook.ts";
import { JOB_ID_HEADER } from "../../src/stages/submitParse.ts";
import { useTestApp, parseEvent, seedJob, snapshot, webhookRequest, type SeededJob } from "./helpers.ts";

const ctx = useTestApp();
let job: SeededJob;
let other: SeededJob;
beforeEach(async () => {
  job = await seedJob(ctx.db.pool, { status: "parse_queued" });
  other = await seedJob(ctx.db.pool, { status: "parse_queued" });
  ctx.t.intake.length = 0;
  ctx.t.clock.now = Date.now();
});

async function expectRefused(request: ReturnType<typeof webhookRequest>, status: number, code?: string) {
  const before = await snapshot(ctx.db.pool);
  const res = await ctx.t.app.inject(request);
  expect(res.statusCode, res.body).toBe(status);
  const body = res.json();
  expect(body).toEqual({ error: { code: expect.any(String), message: expect.any(String) } });
  if (code) expect(body.error.code).toBe(code);
  expect(res.body).not.toContain(job.secret);
  expect(res.body).not.toMatch(/at .*\.ts:\d+/); // no stack
  expect(await snapshot(ctx.db.pool)).toEqual(before);
  expect(ctx.t.intake).toEqual([]);
  return body;
}

describe("webhook: refused deliveries change nothing", () => {
  it("a forged signature is 401 with a generic body", async () => {
    const body = await expectRefused(webhookRequest(parseEvent(job.parseJobId), job.secret, { signature: `sha256=${"ab".repeat(32)}` }), 401, "unauthorized");
    expect(body.error.message).toBe("Webhook signature verification failed.");
  });

  it("a missing or malformed LC-Signature is 401", async () => {
    await expectRefused(webhookRequest(parseEvent(job.parseJobId), job.secret, { signature: null }), 401);
    await expectRefused(webhookRequest(parseEvent(job.parseJobId), job.secret, { signature: "sha256=zz" }), 401);
    await expectRefused(webhookRequest(parseEvent(job.parseJobId), job.secret, { signature: "md5=abc" }), 401);
    const raw = JSON.stringify(parseEvent(job.parseJobId));
    await expectRefused(webhookRequest(raw, job.secret, { signature: signWebhook(job.secret, raw).replace("sha256=", "") }), 401);
  });

  it("a body signed with another job's secret is 401", async () => {
    await expectRefused(webhookRequest(parseEvent(job.parseJobId), other.secret), 401, "unauthorized");
  });

  it("a signature over other bytes (body altered after signing) is 401", async () => {
    const raw = JSON.stringify(parseEvent(job.parseJobId));
    const signature = signWebhook(job.secret, raw);
    await expectRefused(webhookRequest(raw.replace("parse.success", "parse.error"), job.secret, { signature }), 401);
    await expectRefused(webhookRequest(`${raw} `, job.secret, { signature }), 401);
  });

  it("a stale timestamp (older than 5 minutes) is 401, same body as forged", async () => {
    const body = await expectRefused(webhookRequest(parseEvent(job.parseJobId, { timestamp: Date.now() / 1000 - 301 }), job.secret), 401, "unauthorized");
    expect(body.error.message).toBe("Webhook signature verification failed.");
  });

  it("a future timestamp (beyond 5 minutes) is 401", async () => {
    await expectRefused(webhookRequest(parseEvent(job.parseJobId, { timestamp: Date.now() / 1000 + 301 }), job.secret), 401);
  });

  it("a timestamp just inside the window is accepted", async () => {
    const res = await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId, { timestamp: Date.now() / 1000 - 290 }), job.secret));
    expect(res.statusCode).toBe(200);
  });

  it("the window is ±5 minutes inclusive: exactly 300 s behind or ahead is accepted, a millisecond more is not", async () => {
    ctx.t.clock.now = Date.UTC(2026, 0, 1, 12);
    const at = ctx.t.clock.now / 1000;
    for (const timestamp of [at - 300, at + 300]) {
      const res = await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId, { timestamp, event_type: "parse.running" }), job.secret));
      expect(res.statusCode, res.body).toBe(200);
    }
    for (const timestamp of [at - 300.001, at + 300.001]) {
      await expectRefused(webhookRequest(parseEvent(job.parseJobId, { timestamp }), job.secret), 401, "unauthorized");
    }
  });

  it("an unknown job is refused exactly like a forged signature, so ids cannot be probed", async () => {
    const forged = await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId), job.secret, { signature: `sha256=${"ab".repeat(32)}` }));
    const unknown = [
      webhookRequest(parseEvent("pjob-nobody"), job.secret),
      webhookRequest(parseEvent(job.parseJobId), job.secret, { headers: { [JOB_ID_HEADER]: randomUUID() } }),
      webhookRequest(parseEvent(job.parseJobId), job.secret, { headers: { [JOB_ID_HEADER]: "not-a-uuid" } }),
    ];
    for (const request of unknown) {
      const body = await expectRefused(request, 401, "unauthorized");
      expect(body).toEqual(forged.json());
    }
  });

  it("our job id header picks the secret to verify with: another job's header fails the signature", async () => {
    await expectRefused(webhookRequest(parseEvent(job.parseJobId), job.secret, { headers: { [JOB_ID_HEADER]: other.jobId } }), 401, "unauthorized");
  });

  it("a job with no webhook secret yet (not submitted) accepts no signature, not even one made with the placeholder key", async () => {
    const unsubmitted = await seedJob(ctx.db.pool, { status: "uploaded" });
    for (const key of [NO_SECRET, "", "null"]) {
      const event = parseEvent(`pjob-${randomUUID()}`);
      await expectRefused(webhookRequest(event, key, { headers: { [JOB_ID_HEADER]: unsubmitted.jobId } }), 401, "unauthorized");
    }
  });

  it("malformed JSON is 400", async () => {
    await expectRefused(webhookRequest("{not json", job.secret), 400, "invalid_json");
    const empty = await expectRefused(webhookRequest("", job.secret), 400, "invalid_json");
    expect(empty.error.message).toBe("The body is empty; expected the LlamaParse event JSON.");
    await expectRefused(webhookRequest("[]", job.secret), 400, "invalid_event");
    await expectRefused(webhookRequest("null", job.secret), 400, "invalid_event");
  });

  it("a body that fails the schema is 400 naming the field", async () => {
    const res = await expectRefused(webhookRequest(parseEvent(job.parseJobId, { event_type: "parse.exploded" }), job.secret), 400, "invalid_event");
    expect(res.error.message).toContain("event_type");
    const noJob = await expectRefused(webhookRequest(parseEvent(job.parseJobId, { data: {} }), job.secret), 400);
    expect(noJob.error.message).toContain("data");
    const badTs = await expectRefused(webhookRequest(parseEvent(job.parseJobId, { timestamp: "yesterday" }), job.secret), 400);
    expect(badTs.error.message).toContain("timestamp");
  });

  it("a wrong content type is 415", async () => {
    await expectRefused(webhookRequest(parseEvent(job.parseJobId), job.secret, { contentType: "text/plain" }), 415, "unsupported_media_type");
    await expectRefused(webhookRequest(parseEvent(job.parseJobId), job.secret, { contentType: "application/x-www-form-urlencoded" }), 415);
    const noType = webhookRequest(parseEvent(job.parseJobId), job.secret);
    delete (noType.headers as Record<string, string>)["content-type"];
    await expectRefused(noType, 415);
  });

  it("an oversized body is 413", async () => {
    const big = parseEvent(job.parseJobId, { padding: "x".repeat(5000) });
    await expectRefused(webhookRequest(big, job.secret), 413, "payload_too_large");
  });

  it("hostile strings in every field are refused or stored as plain data", async () => {
    const hostile = [
      "'; DROP TABLE upload_pipeline.upload_jobs; --",
      "\u0000",
      "<script>alert(1)</script>",
      "../../etc/passwd",
      "𝕏".repeat(300),
      "%00%0d%0a",
      "\r\nSet-Cookie: x=1",
      "{{7*7}}",
      "$(rm -rf /)",
    ];
    for (const s of hostile) {
      for (const overrides of [{ event_id: s }, { event_type: s }, { data: { id: s, job_id: s } }, { timestamp: s }]) {
        const before = await snapshot(ctx.db.pool);
        const res = await ctx.t.app.inject(webhookRequest(parseEvent(job.parseJobId, overrides), job.secret));
        expect(res.statusCode, `${JSON.stringify(overrides)} → ${res.body}`).toBeLessThan(500);
        expect(res.headers["set-cookie"]).toBeUndefined();
        if (res.statusCode >= 400) expect(await snapshot(ctx.db.pool)).toEqual(before);
        else expect(Object.keys(overrides)).toEqual(["event_id"]); // only a free-text id may pass
      }
    }
    // Accepted hostile event ids are stored verbatim, as data; the tables are intact.
    const { rows } = await ctx.db.pool.query("SELECT delivery_key FROM upload_pipeline.webhook_log WHERE job_id = $1 ORDER BY id", [job.jobId]);
    expect(rows.map((r) => r.delivery_key)).toContain(hostile[0]);
    expect(rows.map((r) => r.delivery_key)).not.toContain("\u0000");
    expect((await ctx.db.pool.query("SELECT count(*) FROM upload_pipeline.upload_jobs")).rows[0].count).not.toBe("0");
  });
});

describe("webhook: duplicates and replays", () => {
  it("a genuine duplicate delivery answers 200 and changes nothing", async () => {
    const request = webhookRequest(parseEvent(job.parseJobId), job.secret);
    const first = await ctx.t.app.inject(request);
    expect(first.statusCode).toBe(200);
    expect(first.json()).toEqual({ received: true, outcome: "handed_off" });
    await ctx.t.app.deps.parseIntakes.settled();
    expect(ctx.t.intake).toHaveLength(1);
    const before = await snapshot(ctx.db.pool);
    const again = await ctx.t.app.inject(request);
    expect(again.statusCode).toBe(200);
    expect(again.json()).toEqual({ received: true, duplicate: true });
    await ctx.t.app.deps.parseIntakes.settled();
    expect(await snapshot(ctx.db.pool)).toEqual(before);
    expect(ctx.t.intake).toHaveLength(1);
  });

  it("early and re-signed webhooks: a validly signed re-delivery of an applied event_id with a new timestamp is a duplicate: 200, nothing changes", async () => {
    const event = parseEvent(job.parseJobId, { event_type: "parse.error" });
    const first = await ctx.t.app.inject(webhookRequest(event, job.secret, { headers: { [JOB_ID_HEADER]: job.jobId } }));
    expect(first.json()).toEqual({ received: true, outcome: "failed_parse" });
    const before = await snapshot(ctx.db.pool);
    // LlamaParse did not see our answer and retries: same event_id, re-signed with a new timestamp.
    const resigned = await ctx.t.app.inject(
      webhookRequest({ ...event, timestamp: event.timestamp + 3 }, job.secret, { headers: { [JOB_ID_HEADER]: job.jobId } }),
    );
    expect(resigned.statusCode).toBe(200);
    expect(resigned.json()).toEqual({ received: true, duplicate: true });
    expect(await snapshot(ctx.db.pool)).toEqual(before);
  });

  it("concurrent copies of one delivery: exactly one is applied", async () => {
    const request = webhookRequest(parseEvent(job.parseJobId, { event_type: "parse.error" }), job.secret);
    const answers = await Promise.all(Array.from({ length: 8 }, () => ctx.t.app.inject(request)));
    expect(answers.map((a) => a.statusCode)).toEqual(Array(8).fill(200));
    expect(answers.filter((a) => a.json().outcome === "failed_parse")).toHaveLength(1);
    const { rows } = await ctx.db.pool.query("SELECT to_status FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status = 'failed_parse'", [job.jobId]);
    expect(rows).toHaveLength(1);
  });
});
