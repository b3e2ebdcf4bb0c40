/**
 * Circuit breaker (SPEC §5 Resilience): an OpenAI outage opens the openai breaker; while it is
 * open, embed calls fail fast (`circuit_open`) without reaching OpenAI; after `halfOpenAfterMs` a
 * probe goes through, succeeds once the service is back, the circuit closes and every job
 * completes.
 *
 * The clock: cockatiel reads `Date.now()` itself for the open period, so the test moves
 * `Date.now` (a spy returning real time + an offset) instead of waiting out the default 10 s;
 * the workers read the same clock, so backoffs and `next_attempt_at` (which a `circuit_open`
 * sets to the end of the open period) are on that timeline too. The mocks keep real time: the
 * outage is ended explicitly by replacing the fault plan.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { coerceError } from "../../src/errors.ts";
import type { BreakerState } from "../../src/resilience/breakers.ts";
import type { Embedder } from "../../src/stages/services.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";
import { until } from "../support/until.ts";
import { systemClock } from "../../src/resilience/clock.ts";

const ROUTE = "openai.embeddings";
const realNow = Date.now;
let offsetMs = 0;

let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({
    seed: 5,
    // OpenAI is down from the start, until the test ends the outage. At the default
    // MAX_ATTEMPTS: once the circuit is open, the jobs are parked, not charged.
    faults: { openai: { outages: [{ fault: 503, startMs: 0, endMs: 3_600_000 }] } },
  });
  vi.spyOn(Date, "now").mockImplementation(() => realNow() + offsetMs);
});
afterAll(async () => {
  vi.restoreAllMocks();
  await env.close();
});

const mockCalls = () => Object.values(env.mocks.stats().requests[ROUTE] ?? {}).reduce((a, b) => a + b, 0);

describe("the OpenAI circuit breaker", () => {
  it("opens during an outage, fails fast without calling OpenAI, half-opens, closes when it is back; every job completes", async () => {
    const breaker = env.services.breakers.openai;
    const states: BreakerState[] = [];
    breaker.onStateChange((s) => states.push(s));

    // Every embed call the stages make, and how it ended.
    const calls: Array<{ code: string | undefined }> = [];
    const real = env.services.embedder;
    const observed: Embedder = {
      model: real.model,
      async embed(inputs, signal) {
        const call: { code: string | undefined } = { code: undefined };
        calls.push(call);
        try {
          const result = await real.embed(inputs, signal);
          call.code = "ok";
          return result;
        } catch (err) {
          call.code = coerceError(err).code;
          throw err;
        }
      },
    };
    env.services.embedder = observed;

    const rng = mulberry32(9);
    const docs = await Promise.all(
      Array.from({ length: 6 }, (_, i) => env.upload({ content: markdownDocument(rng, `Outage ${i}`, 2_000), filename: `o${i}.md` })),
    );
    const worker = env.worker({ concurrency: 3, clock: systemClock });
    await worker.start();

    // The outage opens the circuit...
    await until("the breaker to open", () => breaker.state === "open");
    // ... and jobs retrying while it is open fail fast.
    await until("calls failing fast", () => calls.filter((c) => c.code === "circuit_open").length >= 2);
    expect(breaker.state).toBe("open");
    const failedAtOpenAI = calls.filter((c) => c.code === "openai_unavailable").length;
    expect(failedAtOpenAI).toBeGreaterThanOrEqual(breaker.config.policy.kind === "consecutive" ? breaker.config.policy.failures : 1);

    // OpenAI comes back; time passes the open period: the next call is the half-open probe.
    env.mocks.setFaults({});
    offsetMs += breaker.config.halfOpenAfterMs + 1;
    const states0 = await waitForTerminal(
      env,
      docs.map((d) => d.jobId),
    );
    await worker.stop();

    expect([...states0.values()].every((s) => s === "complete")).toBe(true);
    expect(breaker.state).toBe("closed");
    const opened = states.indexOf("open");
    const halfOpened = states.indexOf("half_open", opened);
    const closed = states.indexOf("closed", halfOpened);
    expect(opened).toBeGreaterThanOrEqual(0);
    expect(halfOpened).toBeGreaterThan(opened);
    expect(closed).toBeGreaterThan(halfOpened);

    // Fail fast means not sent: OpenAI (the mock) saw exactly the calls that did not end in
    // circuit_open, the 503s of the outage and the successes after it.
    const fastFailures = calls.filter((c) => c.code === "circuit_open").length;
    expect(fastFailures).toBeGreaterThanOrEqual(2);
    expect(mockCalls()).toBe(calls.length - fastFailures);
    const byStatus = env.mocks.stats().requests[ROUTE] ?? {};
    expect(byStatus["503"]).toBe(failedAtOpenAI);
    expect(byStatus["200"]).toBe(calls.filter((c) => c.code === "ok").length);
  });
});
