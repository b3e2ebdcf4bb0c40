/**
 * Traces: one trace per document across every stage and retry, continued from the job row's
 * traceparent by whichever worker takes the job (collected here with an in-memory exporter).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { startTracing } from "../../src/tracing.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

const exporter = new InMemorySpanExporter();
let env: PipelineEnv;
beforeAll(async () => {
  startTracing({ processors: [new SimpleSpanProcessor(exporter)] });
  env = await startPipelineEnv({ seed: 4 });
});
afterAll(() => env.close());

const spansOf = (jobId: string) => exporter.getFinishedSpans().filter((s) => s.attributes["job.id"] === jobId && s.name.startsWith("stage "));

describe("traces", () => {
  it("give each document one trace over all its stages, recorded in the job row, and continue a trace another worker started", async () => {
    const rng = mulberry32(3);
    const fresh = await env.upload({ content: markdownDocument(rng, "Traced", 1_500) });
    const resumed = await env.upload({ content: markdownDocument(rng, "Resumed", 1_500) });
    // As if another worker had opened this document's trace before it crashed.
    const plantedTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
    const plantedSpan = "00f067aa0ba902b7";
    await env.db.pool.query("UPDATE upload_pipeline.upload_jobs SET traceparent = $2 WHERE job_id = $1", [
      resumed.jobId,
      `00-${plantedTrace}-${plantedSpan}-01`,
    ]);

    const worker = env.worker({ concurrency: 2 });
    await worker.start();
    expect([...(await waitForTerminal(env, [fresh.jobId, resumed.jobId], 60_000)).values()]).toEqual(["complete", "complete"]);
    await worker.stop();

    const spans = spansOf(fresh.jobId);
    // Every worker stage (the reconciler only runs when a webhook is late).
    expect(spans.map((s) => s.name)).toEqual(expect.arrayContaining(["stage submit_parse", "stage validate", "stage chunk", "stage embed", "stage finish"]));
    const traceIds = new Set(spans.map((s) => s.spanContext().traceId));
    expect(traceIds.size).toBe(1);
    const { rows } = await env.db.pool.query<{ traceparent: string }>("SELECT traceparent FROM upload_pipeline.upload_jobs WHERE job_id = $1", [fresh.jobId]);
    expect(rows[0]!.traceparent).toMatch(new RegExp(`^00-${[...traceIds][0]}-[0-9a-f]{16}-01$`));

    const continued = spansOf(resumed.jobId);
    expect(continued.length).toBeGreaterThanOrEqual(5);
    for (const s of continued) {
      expect(s.spanContext().traceId).toBe(plantedTrace);
      expect(s.parentSpanContext?.spanId).toBe(plantedSpan);
    }
  }, 90_000);
});
