/**
 * The submit stage (`uploaded → parse_queued`) never bills a second parse and never sends one
 * without its lease: a retry after a crash finds the submission it may have made by its tags and
 * signs with the recorded secret; a lost lease stops it before the call, and a submission that
 * returns to a lost lease cancels itself only when another one replaced it. Real PostgreSQL, the
 * mocks' handlers, the real API receiving the mock's webhooks, real workers stepped with `runOnce`.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { systemClock, type Clock } from "../../src/resilience/clock.ts";
import { FaultInjector, type FaultRule } from "../../src/worker/faultPoints.ts";
import type { JobRunOutcome } from "../../src/worker/BaseWorker.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

let env: PipelineEnv;
/** A worker clock past every lease a crashed worker left (30 s): the next claim takes the job over. */
const later: Clock = { ...systemClock, now: () => Date.now() + 120_000 };

beforeAll(async () => {
  env = await startPipelineEnv({ seed: 23 });
});
afterAll(() => env.close());
beforeEach(() => env.mocks.setFaults({}));

interface JobRow {
  status: string;
  parse_job_id: string | null;
  webhook_secret: string | null;
  lease_token: string | null;
  progress: Record<string, unknown>;
}

async function job(jobId: string): Promise<JobRow> {
  const { rows } = await env.db.pool.query<JobRow>(
    "SELECT status, parse_job_id, webhook_secret, lease_token, progress FROM upload_pipeline.upload_jobs WHERE job_id = $1",
    [jobId],
  );
  return rows[0]!;
}

const parseJobsCreated = () => env.mocks.stats().llamaparse.jobsCreated;
const parsesCancelled = () => env.mocks.stats().llamaparse.jobsFinished.CANCELLED ?? 0;

/** One claim of the job by a worker with these fault rules; returns how the run ended. */
async function runOnce(rules: FaultRule[], clock: Clock = systemClock): Promise<JobRunOutcome> {
  let outcome: JobRunOutcome | undefined;
  const worker = env.worker({ clock, faults: new FaultInjector(rules), onJobDone: (e) => void (outcome = e.outcome) });
  await worker.runOnce();
  expect(outcome).toBeDefined();
  return outcome!;
}

/** Run a started worker until the job is terminal; returns its final status. */
async function runToTerminal(jobId: string, clock: Clock = systemClock): Promise<string | undefined> {
  const worker = env.worker({ clock });
  await worker.start();
  try {
    return (await waitForTerminal(env, [jobId], 20_000)).get(jobId);
  } finally {
    await worker.stop();
  }
}

/** Another holder takes the lease (and, if given, has recorded its own parse job) while the stage runs. */
const takeLease = (jobId: string, parseJobId?: string) =>
  env.db.pool.query(
    `UPDATE upload_pipeline.upload_jobs SET lease_token = gen_random_uuid(), lease_expires_at = now() + interval '5 minutes',
            parse_job_id = coalesce($2, parse_job_id), status = CASE WHEN $2::text IS NULL THEN status ELSE 'parse_queued' END
      WHERE job_id = $1`,
    [jobId, parseJobId ?? null],
  );

const retry = (documentId: string) =>
  env.api.inject({ method: "POST", url: `/jobs/${documentId}/retry`, headers: { authorization: `Bearer ${env.config.SUPABASE_SERVICE_ROLE_KEY}` } });

describe("submit after a crash", () => {
  it("a crash after the intent is recorded, before anything is sent: the next attempt submits once, signed with the recorded secret, so the webhook verifies", async () => {
    const before = parseJobsCreated();
    const doc = await env.upload({ content: "# Crash before submit\n\nThe worker dies after recording its intent." });
    expect(await runOnce([{ point: "call.llamaparse.submit.before", action: "crash" }])).toBe("crashed");
    const crashed = await job(doc.jobId);
    expect(crashed).toMatchObject({ status: "uploaded", parse_job_id: null, webhook_secret: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(crashed.progress.parse_submit).toBeDefined();
    expect(parseJobsCreated()).toBe(before);

    expect(await runToTerminal(doc.jobId, later)).toBe("complete");
    const done = await job(doc.jobId);
    expect(parseJobsCreated() - before).toBe(1);
    expect(done.webhook_secret).toBe(crashed.webhook_secret);
    // Only a delivery whose signature verified is logged.
    const { rows } = await env.db.pool.query("SELECT 1 FROM upload_pipeline.webhook_log WHERE job_id = $1 AND parse_job_id = $2", [
      doc.jobId,
      done.parse_job_id,
    ]);
    expect(rows.length).toBeGreaterThan(0);
  });

  it("an operator's retry that crashes before it submits parses anew: the lookup does not adopt the earlier, failed parse", async () => {
    env.mocks.setFaults({ llamaparse: { jobFailureRate: 1 } });
    const doc = await env.upload({ content: "# Failed once\n\nLlamaParse fails the first parse of this document." });
    expect(await runToTerminal(doc.jobId)).toBe("failed_parse");
    const failed = await job(doc.jobId);
    env.mocks.setFaults({});
    expect((await retry(doc.documentId)).statusCode).toBe(200);
    const before = parseJobsCreated();
    expect(await runOnce([{ point: "call.llamaparse.submit.before", action: "crash" }])).toBe("crashed");

    expect(await runToTerminal(doc.jobId, later)).toBe("complete");
    expect(parseJobsCreated() - before).toBe(1);
    expect((await job(doc.jobId)).parse_job_id).not.toBe(failed.parse_job_id);
  });

  it("a worker taking over from an expired lease waits out the previous holder's call before it looks the submission up", async () => {
    const doc = await env.upload({ content: "# Taken over\n\nThe first worker froze after recording its intent." });
    expect(await runOnce([{ point: "call.llamaparse.submit.before", action: "crash" }])).toBe("crashed");
    const before = parseJobsCreated();
    const { settings } = env.services;
    const waitMs = settings.takeoverWaitMs;
    settings.takeoverWaitMs = 600_000; // longer than the 90 s since the lease ran out on `later`
    try {
      expect(await runOnce([], later)).toBe("snoozed");
    } finally {
      settings.takeoverWaitMs = waitMs;
    }
    expect((await job(doc.jobId)).status).toBe("uploaded");
    expect(parseJobsCreated()).toBe(before);
  });
});

describe("the lease guards the billed call", () => {
  it("a worker that lost its lease before recording its intent records nothing", async () => {
    const doc = await env.upload({ content: "# Lost before the intent\n\nAnother worker holds the job now." });
    const before = parseJobsCreated();
    expect(await runOnce([{ point: "commit.parse_intent.before", action: () => takeLease(doc.jobId).then(() => {}) }])).toBe("lost");
    const row = await job(doc.jobId);
    expect(row.webhook_secret).toBeNull();
    expect(row.progress.parse_submit).toBeUndefined();
    expect(parseJobsCreated()).toBe(before);
  });

  it("a worker that lost its lease right before submitting does not submit", async () => {
    const doc = await env.upload({ content: "# Lost before submit\n\nThe lease is gone when the file is ready to send." });
    const before = parseJobsCreated();
    expect(await runOnce([{ point: "call.llamaparse.submit.before", action: () => takeLease(doc.jobId).then(() => {}) }])).toBe("lost");
    expect(parseJobsCreated()).toBe(before);
  });

  it("a submission that returns to a lost lease cancels its parse when the job now records another, and keeps it when the job records it", async () => {
    // Parses stay pending, so a cancel is possible and visible.
    env.mocks.setFaults({ llamaparse: { schedule: { pending: { dist: "fixed", ms: 600_000 } } } });
    const replaced = await env.upload({ content: "# Replaced\n\nAnother holder submitted its own parse meanwhile." });
    const cancelledBefore = parsesCancelled();
    const point = "call.llamaparse.submit.after";
    expect(await runOnce([{ point, action: () => takeLease(replaced.jobId, "another-holders-parse").then(() => {}) }])).toBe("lost");
    expect(parsesCancelled() - cancelledBefore).toBe(1);

    const adopted = await env.upload({ content: "# Adopted\n\nThe new holder found this submission by its tags." });
    const adopt = async () => {
      const [ours] = await env.services.llamaparse.findParseJobs({ createdAfter: new Date(Date.now() - 60_000), tags: { pipeline_job_id: adopted.jobId } });
      await takeLease(adopted.jobId, ours!.id);
    };
    expect(await runOnce([{ point, action: adopt }])).toBe("lost");
    expect(parsesCancelled() - cancelledBefore).toBe(1);
  });
});

describe("early deliveries", () => {
  it("only an early delivery for this submission's parse job keeps the lease to fetch the result at once", async () => {
    env.mocks.setFaults({ webhooks: { drop: { rate: 1 } }, llamaparse: { schedule: { pending: { dist: "fixed", ms: 600_000 } } } });
    const doc = await env.upload({ content: "# Early for another\n\nA delivery of some other parse job arrived first." });
    await env.db.pool.query(
      `INSERT INTO upload_pipeline.webhook_log (delivery_key, job_id, parse_job_id, event_type, event_ts, body_sha256, outcome)
       VALUES ($1, $2, 'a-superseded-parse', 'parse.success', extract(epoch FROM now()), repeat('0', 64), 'early')`,
      [`early-${doc.jobId}`, doc.jobId],
    );
    expect(await runOnce([])).toBe("released");
    expect(await job(doc.jobId)).toMatchObject({ status: "parse_queued", lease_token: null });
    const { rows } = await env.db.pool.query<{ detail: Record<string, unknown> }>(
      "SELECT detail FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status = 'parse_queued'",
      [doc.jobId],
    );
    expect(rows[0]!.detail.early_event_id).toBeUndefined();
  });
});
