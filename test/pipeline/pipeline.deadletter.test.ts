/**
 * Dead letter and recovery at the parse end (SPEC §4 failure edges, §5 Errors): content that can
 * never succeed ends in `failed_parse` at once with a `last_error` that says why; a job whose
 * transient failures outlast `max_attempts` is dead-lettered too; a webhook that never arrives
 * is made up for by the reconciler.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { POISON_MARKER } from "../../mocks/index.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";
import { until } from "../support/until.ts";
import { systemClock, type Clock } from "../../src/resilience/clock.ts";

let env: PipelineEnv;
/** The workers' clock: real time plus an offset the tests move instead of waiting. */
let offsetMs = 0;
const clock: Clock = { ...systemClock, now: () => Date.now() + offsetMs };

beforeAll(async () => {
  env = await startPipelineEnv({ seed: 8 });
});
afterAll(() => env.close());

interface JobState {
  status: string;
  attempts: number;
  last_error: { class: string; code: string; message: string; stage: string } | null;
  chunks: number;
}

async function jobState(jobId: string): Promise<JobState> {
  const { rows } = await env.db.pool.query<JobState>(
    `SELECT j.status, j.attempts, j.last_error,
            (SELECT count(*)::int FROM upload_pipeline.document_chunk_buffer c WHERE c.document_id = j.document_id) AS chunks
       FROM upload_pipeline.upload_jobs j WHERE j.job_id = $1`,
    [jobId],
  );
  return rows[0]!;
}

async function events(jobId: string) {
  const { rows } = await env.db.pool.query<{ from_status: string | null; to_status: string; detail: Record<string, unknown> }>(
    "SELECT from_status, to_status, detail FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id",
    [jobId],
  );
  return rows;
}

async function runUntilTerminal(jobIds: string[]) {
  const worker = env.worker({ clock });
  await worker.start();
  try {
    return await waitForTerminal(env, jobIds, 15_000);
  } finally {
    await worker.stop();
  }
}

describe("dead letter", () => {
  it("a poison document (LlamaParse reports FAILED) ends in failed_parse with a permanent last_error", async () => {
    const doc = await env.upload({ content: `# Report\n\nSome text.\n\n${POISON_MARKER}\n\nMore text.\n`, filename: "poison.md" });
    await runUntilTerminal([doc.jobId]);

    const job = await jobState(doc.jobId);
    expect(job.status).toBe("failed_parse");
    expect(job.last_error).toMatchObject({ class: "permanent", code: "llamaparse_failed", stage: "parse_queued" });
    expect(job.last_error!.message).toMatch(/LlamaParse .*fail/i);
    expect(job.chunks).toBe(0);
    // Failed once, at once: no retries of a document that cannot parse.
    const path = await events(doc.jobId);
    expect(path.map((e) => e.to_status)).toEqual(["uploaded", "parse_queued", "failed_parse"]);
  });

  it("an empty document (whitespace only) ends in failed_parse with parse_empty", async () => {
    const doc = await env.upload({ content: "   \n\n\t  \n", filename: "blank.txt", mime: "text/plain" });
    await runUntilTerminal([doc.jobId]);

    const job = await jobState(doc.jobId);
    expect(job.status).toBe("failed_parse");
    expect(job.last_error).toMatchObject({ class: "permanent", code: "parse_empty", stage: "parsed" });
    expect(job.last_error!.message).toMatch(/no text/);
    expect(job.chunks).toBe(0);
    const path = await events(doc.jobId);
    expect(path.map((e) => e.to_status)).toEqual(["uploaded", "parse_queued", "parsed", "failed_parse"]);
    expect(path.at(-1)!.detail).toMatchObject({ reason: "permanent", code: "parse_empty" });
  });

  it("transient failures that outlast max_attempts dead-letter the job with the last transient error", async () => {
    // LlamaParse refuses every upload (500) for the whole test; looking jobs up still works.
    env.mocks.setFaults({ llamaparse: { outages: [{ fault: 500, startMs: 0, endMs: 3_600_000, routes: ["llamaparse.upload"] }] } });
    try {
      const before = env.mocks.stats();
      const doc = await env.upload({ content: "# Fine\n\nA document LlamaParse never gets to see.\n", filename: "fine.md" });
      await runUntilTerminal([doc.jobId]);

      const job = await jobState(doc.jobId);
      expect(job.status).toBe("failed_parse");
      expect(job.attempts).toBe(env.config.MAX_ATTEMPTS);
      expect(job.last_error).toMatchObject({ class: "transient", stage: "uploaded", attempt: env.config.MAX_ATTEMPTS });
      const last = (await events(doc.jobId)).at(-1)!;
      expect(last).toMatchObject({ from_status: "uploaded", to_status: "failed_parse", detail: { reason: "attempts_exhausted" } });
      // Every attempt reached LlamaParse (none was lost to an open circuit), and none was billed.
      const after = env.mocks.stats();
      expect((after.requests["llamaparse.upload"]?.["500"] ?? 0) - (before.requests["llamaparse.upload"]?.["500"] ?? 0)).toBe(env.config.MAX_ATTEMPTS);
      expect(after.llamaparse.jobsCreated).toBe(before.llamaparse.jobsCreated);
    } finally {
      env.mocks.setFaults({});
    }
  });
});

describe("lost webhook", () => {
  it("a job whose webhook never comes is recovered by the reconciler after the deadline", async () => {
    env.mocks.setFaults({ webhooks: { drop: { rate: 1 } } });
    try {
      const content = "# Recovered\n\nThe webhook for this document is dropped.\n\n## Part\n\nThe reconciler polls LlamaParse.\n";
      const before = env.mocks.stats().webhooks.deliveries.genuine;
      const doc = await env.upload({ content, filename: "lost.md" });
      const worker = env.worker({ clock });
      await worker.start();
      // LlamaParse finished and its webhook was dropped: nothing will arrive.
      await until("the webhook to be dropped", () => (env.mocks.stats().webhooks.deliveries.genuine.dropped ?? 0) > (before.dropped ?? 0));
      // The parse can finish (and its webhook be dropped) before the worker has committed parse_queued.
      await until("the job to wait for its webhook", async () => (await jobState(doc.jobId)).status === "parse_queued");
      // The webhook deadline passes (simulated): the job comes due for the reconciler.
      offsetMs += env.config.WEBHOOK_DEADLINE_SECONDS * 1000 + 1;
      const states = await waitForTerminal(env, [doc.jobId], 15_000);
      await worker.stop();

      expect(states.get(doc.jobId)).toBe("complete");
      expect(env.mocks.stats().webhooks.deliveries.genuine.delivered ?? 0).toBe(before.delivered ?? 0);
      const intake = (await events(doc.jobId)).find((e) => e.from_status === "parse_queued");
      expect(intake).toMatchObject({ to_status: "parsed", detail: { actor: "reconciler" } });
      expect((await jobState(doc.jobId)).chunks).toBeGreaterThan(0);
    } finally {
      env.mocks.setFaults({});
    }
  });
});
