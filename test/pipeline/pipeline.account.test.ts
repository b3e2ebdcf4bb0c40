/**
 * Account-level errors stop the fleet, not the documents: while OpenAI answers
 * `insufficient_quota`, the openai breaker refuses every call but one probe per interval, the jobs
 * wait in their stage with no attempt spent, `/healthz` names the service and why, and when the
 * quota is back the next probe succeeds and every job completes with no operator retry.
 *
 * Time: the breaker's probe interval (30 s) is read from `Date.now()`, which the test moves
 * forward (as in pipeline.breaker.test.ts); the workers use the same clock for `next_attempt_at`.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { createLogger } from "../../src/logger.ts";
import { createWorkerMetrics } from "../../src/worker/metrics.ts";
import { reportServiceConditions } from "../../src/worker/serviceConditions.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";
import { systemClock } from "../../src/resilience/clock.ts";

const realNow = Date.now;
let offsetMs = 0;
let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({ seed: 41, faults: { openai: { outages: [{ fault: "insufficient_quota", startMs: 0, endMs: 3_600_000 }] } } });
  vi.spyOn(Date, "now").mockImplementation(() => realNow() + offsetMs);
});
afterAll(async () => {
  vi.restoreAllMocks();
  await env.close();
});

const health = async () => (await env.api.inject({ method: "GET", url: "/healthz" })).json();
const embedCalls = () => Object.values(env.mocks.stats().requests["openai.embeddings"] ?? {}).reduce((a, b) => a + b, 0);

describe("account-level errors stop the fleet, not the documents", () => {
  it("no quota: jobs wait without spending attempts, /healthz names OpenAI and why, a metric and one log line per change; the fixed quota resumes every job", async () => {
    const { breakers } = env.services;
    const lines: Array<{ level: number; msg: string; service?: string }> = [];
    const log = createLogger({ level: "info" });
    const capture = {
      ...log,
      error: (o: object, msg: string) => lines.push({ level: 50, msg, ...o }),
      info: (o: object, msg: string) => lines.push({ level: 30, msg, ...o }),
    } as unknown as typeof log;
    const metrics = createWorkerMetrics(breakers);
    const reporting = reportServiceConditions(breakers, { pool: env.db.pool, log: capture, metrics, workerId: "quota-worker" });

    const rng = mulberry32(41);
    const docs = await Promise.all(
      Array.from({ length: 4 }, (_, i) => env.upload({ content: markdownDocument(rng, `Quota ${i}`, 1_500), filename: `q${i}.md` })),
    );
    const ids = docs.map((d) => d.jobId);
    const worker = env.worker({ workerId: "quota-worker", concurrency: 2, clock: systemClock });
    await worker.start();

    await expect.poll(async () => (await health()).status, { timeout: 20_000 }).toBe("degraded");
    const body = await health();
    expect(body.services.openai).toMatchObject({
      status: "refusing",
      code: "openai_insufficient_quota",
      reported_by: "quota-worker",
      reason: expect.stringContaining("quota"),
    });
    expect(JSON.stringify(body)).not.toContain(env.config.OPENAI_API_KEY);
    expect(breakers.openai.state).toBe("isolated");

    // Every job reaches the embedder and waits there: parked, no attempt spent, not failed.
    await expect
      .poll(
        async () => {
          const { rows } = await env.db.pool.query<{ status: string }>("SELECT status FROM upload_pipeline.upload_jobs WHERE job_id = ANY($1)", [ids]);
          return rows.every((r) => r.status === "embedding_in_progress");
        },
        { timeout: 20_000 },
      )
      .toBe(true);
    const calls = embedCalls();
    await new Promise((r) => setTimeout(r, 500));
    expect(embedCalls()).toBe(calls); // no probe storm: nothing is sent before the probe is due
    const { rows: waiting } = await env.db.pool.query("SELECT attempts, last_error FROM upload_pipeline.upload_jobs WHERE job_id = ANY($1)", [ids]);
    for (const row of waiting) {
      expect(row.attempts).toBe(0);
      expect(row.last_error).toMatchObject({ code: "openai_insufficient_quota", class: "transient" });
    }

    // The quota is fixed; at the next probe the breaker lets go and the jobs resume.
    env.mocks.setFaults({});
    offsetMs += breakers.openai.config.refusalProbeMs + 1_000;
    const states = await waitForTerminal(env, ids, 30_000);
    await worker.stop();
    reporting.dispose();
    expect([...states.values()].every((s) => s === "complete")).toBe(true);
    expect(breakers.openai.state).toBe("closed");
    await expect.poll(async () => (await health()).status).toBe("ok");

    expect(lines.filter((l) => l.service === "openai").map((l) => [l.level, l.msg.split(":")[0]])).toEqual([
      [50, "openai refuses the account"],
      [30, "openai accepts the account again"],
    ]);
    const text = await metrics.render();
    expect(text).toContain('upload_pipeline_service_condition_changes_total{service="openai",state="refusing"} 1');
    expect(text).toContain('upload_pipeline_service_condition_changes_total{service="openai",state="ok"} 1');
    expect(text).toContain('upload_pipeline_service_refusing{service="openai"} 0');
  });
});
