/**
 * Issue 17 items 4–7 end to end (real PostgreSQL, the mocks' handlers, the real API receiving
 * the mock's webhooks, real workers): a manual retry after a failed parse re-parses; a parse
 * that never finishes ends; no page is dropped silently; early and re-signed webhooks.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { FaultInjector } from "../../src/worker/faultPoints.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";
import { until } from "../support/until.ts";
import { systemClock, type Clock } from "../../src/resilience/clock.ts";

let env: PipelineEnv;
/** The workers' clock: real time plus an offset the tests move instead of waiting. */
let offsetMs = 0;
const clock: Clock = { ...systemClock, now: () => Date.now() + offsetMs };

beforeAll(async () => {
  env = await startPipelineEnv({ seed: 17 });
});
afterAll(() => env.close());
beforeEach(() => {
  offsetMs = 0;
  env.mocks.setFaults({});
});

interface JobRow {
  status: string;
  attempts: number;
  parse_job_id: string | null;
  webhook_secret: string | null;
  last_error: { code: string; message: string } | null;
  progress: Record<string, unknown>;
}

async function job(jobId: string): Promise<JobRow> {
  const { rows } = await env.db.pool.query<JobRow>(
    "SELECT status, attempts, parse_job_id, webhook_secret, last_error, progress FROM upload_pipeline.upload_jobs WHERE job_id = $1",
    [jobId],
  );
  return rows[0]!;
}

/** LlamaParse jobs the mock has created for this test's document (the mock counts per file). */
const parseJobsCreated = () => env.mocks.stats().llamaparse.jobsCreated;

async function runToTerminal(jobIds: string[], overrides: Parameters<PipelineEnv["worker"]>[0] = {}) {
  const worker = env.worker({ clock, ...overrides });
  await worker.start();
  try {
    return await waitForTerminal(env, jobIds, 20_000);
  } finally {
    await worker.stop();
  }
}

const retry = (documentId: string) =>
  env.api.inject({ method: "POST", url: `/jobs/${documentId}/retry`, headers: { authorization: `Bearer ${env.config.SUPABASE_SERVICE_ROLE_KEY}` } });

describe("a manual retry after a failed parse re-parses", () => {
  it("one parse FAILED (jobFailureRate 1), then 0: the retry submits a new parse with a new secret and completes; exactly two LlamaParse jobs", async () => {
    const before = parseJobsCreated();
    env.mocks.setFaults({ llamaparse: { jobFailureRate: 1 } });
    const doc = await env.upload({ content: "# Retry me\n\nA document LlamaParse fails the first time." });
    expect((await runToTerminal([doc.jobId])).get(doc.jobId)).toBe("failed_parse");
    const failed = await job(doc.jobId);
    expect(failed.last_error?.code).toBe("llamaparse_failed");

    env.mocks.setFaults({ llamaparse: { jobFailureRate: 0 } });
    const res = await retry(doc.documentId);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().status).toBe("uploaded");
    expect((await runToTerminal([doc.jobId])).get(doc.jobId)).toBe("complete");
    const done = await job(doc.jobId);
    expect(done.parse_job_id).not.toBe(failed.parse_job_id);
    expect(done.webhook_secret).not.toBe(failed.webhook_secret);
    expect(parseJobsCreated() - before).toBe(2);
  });

  it("a crash mid-submit of the retry still bills one more parse, not the old failed one reused nor a third", async () => {
    const before = parseJobsCreated();
    env.mocks.setFaults({ llamaparse: { jobFailureRate: 1 } });
    const doc = await env.upload({ content: "# Retry with a crash\n\nThe retry's worker dies right after LlamaParse accepted the file." });
    expect((await runToTerminal([doc.jobId])).get(doc.jobId)).toBe("failed_parse");
    const failed = await job(doc.jobId);
    env.mocks.setFaults({ llamaparse: { jobFailureRate: 0 } });
    expect((await retry(doc.documentId)).statusCode).toBe(200);

    let crashed = false;
    const crashing = env.worker({
      clock,
      faults: new FaultInjector([{ point: "call.llamaparse.submit.after", action: "crash" }]),
      onJobDone: (e) => void (e.outcome === "crashed" && (crashed = true)),
    });
    await crashing.start();
    await until("the retry's submission to crash after LlamaParse accepted it", () => crashed);
    await crashing.stop();
    expect(parseJobsCreated() - before).toBe(2);
    expect((await job(doc.jobId)).status).toBe("uploaded");

    offsetMs = 120_000; // past the crashed worker's lease
    expect((await runToTerminal([doc.jobId])).get(doc.jobId)).toBe("complete");
    expect(parseJobsCreated() - before).toBe(2);
    expect((await job(doc.jobId)).parse_job_id).not.toBe(failed.parse_job_id);
  });
});

describe("a parse that never finishes ends", () => {
  it("polled past PARSE_DEADLINE_SECONDS (default 3600) after its submission, the job ends in failed_parse with parse_deadline_exceeded", async () => {
    expect(env.services.settings.parseDeadlineMs).toBe(3_600_000);
    env.mocks.setFaults({ llamaparse: { schedule: { pending: { dist: "fixed", ms: 86_400_000 } } } });
    const doc = await env.upload({ content: "# Stuck\n\nLlamaParse never finishes this one." });
    const probe = new FaultInjector();
    const polls = () => probe.seen.filter((p) => p === "call.llamaparse.get.after").length;
    const worker = env.worker({ clock, faults: probe });
    await worker.start();
    try {
      await until("parse_queued", async () => (await job(doc.jobId)).status === "parse_queued");
      // Past the webhook deadline: the reconciler polls, finds PENDING and snoozes, again and again.
      offsetMs = 5_000;
      await until("two reconciler polls", () => polls() >= 2);
      // Each claim counts an attempt and each snooze refunds it: between polls, none is spent.
      await until("released between polls with no attempt spent", async () => (await job(doc.jobId)).attempts === 0);
      expect((await job(doc.jobId)).status).toBe("parse_queued");
      offsetMs = 30 * 60_000; // half the deadline: still polling, nothing spent
      const seen = polls();
      await until("another poll", () => polls() > seen);
      await until("released again with no attempt spent", async () => (await job(doc.jobId)).attempts === 0);
      expect((await job(doc.jobId)).status).toBe("parse_queued");
      offsetMs = 3_601_000;
      await until("failed_parse", async () => (await job(doc.jobId)).status === "failed_parse");
    } finally {
      await worker.stop();
    }
    const failed = await job(doc.jobId);
    expect(failed.last_error?.code).toBe("parse_deadline_exceeded");
    expect(failed.last_error?.message).toMatch(/did not finish within PARSE_DEADLINE_SECONDS \(3600 s/);
  });
});

describe("no page is dropped silently", () => {
  const threePages = "# Page one\n\nFirst page text.\f# Page two\n\nSecond page text.\f# Page three\n\nThird page text.";

  it("PARTIAL_PARSE=fail (default): a partial result fails the job naming the failed page, recorded in progress and GET /jobs", async () => {
    expect(env.services.settings.partialParse).toBe("fail");
    env.mocks.setFaults({ llamaparse: { partialResults: { rate: 1, pages: 1 } } });
    const doc = await env.upload({ content: threePages });
    expect((await runToTerminal([doc.jobId])).get(doc.jobId)).toBe("failed_parse");
    const failed = await job(doc.jobId);
    const pages = failed.progress.parse_failed_pages as number[];
    expect(pages).toHaveLength(1);
    expect(failed.last_error?.code).toBe("parse_partial");
    expect(failed.last_error?.message).toContain(`could not parse page ${pages[0]} of 3`);
    const status = await env.api.inject({
      method: "GET",
      url: `/jobs/${doc.documentId}`,
      headers: { authorization: `Bearer ${env.config.SUPABASE_SERVICE_ROLE_KEY}` },
    });
    expect(status.json().progress.parse).toEqual({ failed_pages: pages, pages_total: 3 });
    const log = await env.db.pool.query("SELECT event_type FROM upload_pipeline.webhook_log WHERE job_id = $1", [doc.jobId]);
    expect(log.rows.map((r) => r.event_type)).toContain("parse.partial_success");
  });

  it("PARTIAL_PARSE=accept: the other pages complete, the failed page is recorded and left out", async () => {
    // The API's intake runs PARTIAL_PARSE=fail; lose the webhooks so this worker's reconciler decides.
    env.mocks.setFaults({ llamaparse: { partialResults: { rate: 1, pages: 1 } }, webhooks: { drop: { rate: 1 } } });
    const doc = await env.upload({ content: threePages.replaceAll("text", "words") });
    const accepting = { ...env.services, settings: { ...env.services.settings, partialParse: "accept" as const } };
    offsetMs = 5_000; // past the webhook deadline at once
    expect((await runToTerminal([doc.jobId], { services: accepting })).get(doc.jobId)).toBe("complete");
    const done = await job(doc.jobId);
    const pages = done.progress.parse_failed_pages as number[];
    expect(pages).toHaveLength(1);
    const { rows } = await env.db.pool.query<{ text: string }>(
      "SELECT text FROM upload_pipeline.document_chunk_buffer c JOIN upload_pipeline.upload_jobs j USING (document_id) WHERE j.job_id = $1",
      [doc.jobId],
    );
    const text = rows.map((r) => r.text).join("\n");
    const names = ["one", "two", "three"];
    for (let page = 1; page <= 3; page++) expect(text.includes(`# Page ${names[page - 1]}`), `page ${page}`).toBe(!pages.includes(page));
  });
});

describe("early and re-signed webhooks", () => {
  it("a webhook that arrives before parse_queued commits is kept (202) and applied at the commit, in the same claim", async () => {
    const delivered = env.mocks.state.webhooks.log.length;
    // Hold the worker between LlamaParse accepting the file and its commit until the webhook came.
    const hold = new FaultInjector([
      {
        point: "call.llamaparse.submit.after",
        action: () => until("the parse.success delivery", () => env.mocks.state.webhooks.log.slice(delivered).some((d) => d.eventType === "parse.success")),
      },
    ]);
    const doc = await env.upload({ content: "# Early\n\nLlamaParse is faster than our commit." });
    expect((await runToTerminal([doc.jobId], { faults: hold })).get(doc.jobId)).toBe("complete");
    const success = env.mocks.state.webhooks.log.slice(delivered).find((d) => d.eventType === "parse.success")!;
    expect(success.attempts).toEqual([202]);
    const kept = await env.db.pool.query("SELECT outcome FROM upload_pipeline.webhook_log WHERE delivery_key = $1", [success.eventId]);
    expect(kept.rows[0].outcome).toBe("early");
    const { rows } = await env.db.pool.query<{ to_status: string; lease_token: string | null; detail: Record<string, unknown> }>(
      "SELECT to_status, lease_token, detail FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status IN ('parse_queued', 'parsed') ORDER BY id",
      [doc.jobId],
    );
    expect(rows[0]).toMatchObject({ to_status: "parse_queued", detail: { early_event_id: success.eventId } });
    // Parsed under the same lease as the commit: no wait for the webhook deadline.
    expect(rows[1]).toMatchObject({ to_status: "parsed", lease_token: rows[0]!.lease_token, detail: { actor: "reconciler" } });
  });

  it("LlamaParse re-signing a delivery it retries (same event_id, new timestamp) gets a 2xx duplicate and changes nothing", async () => {
    const delivered = env.mocks.state.webhooks.log.length;
    env.mocks.setFaults({ webhooks: { replay: { rate: 1, afterMs: 1_100, resign: true, events: ["parse.success"] } } });
    const doc = await env.upload({ content: "# Re-signed\n\nThe sender did not see our answer and retries." });
    expect((await runToTerminal([doc.jobId])).get(doc.jobId)).toBe("complete");
    await env.mocks.webhooksIdle();
    const log = env.mocks.state.webhooks.log.slice(delivered).filter((d) => d.eventType === "parse.success");
    const genuine = log.find((d) => d.kind === "genuine")!;
    const resigned = log.find((d) => d.kind === "replay")!;
    expect(resigned.eventId).toBe(genuine.eventId);
    expect(resigned.timestamp).toBeGreaterThan(genuine.timestamp);
    expect(resigned.attempts).toEqual([200]);
    const rows = await env.db.pool.query("SELECT count(*)::int AS n FROM upload_pipeline.webhook_log WHERE delivery_key = $1", [genuine.eventId]);
    expect(rows.rows[0].n).toBe(1);
    expect((await job(doc.jobId)).status).toBe("complete");
  });
});
