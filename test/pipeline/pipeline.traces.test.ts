/**
 * One trace per document across the API and the workers: the upload request is the root, the
 * webhook delivery and its parse intake, every stage run on either worker (one crashes mid-job,
 * another continues), the retry in between and every external call are spans of it, the calls
 * as client spans with the HTTP semantic-convention attributes and nothing secret in them.
 * Collected in-process with an in-memory exporter.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SpanKind } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { ApiClient } from "../../harness/api.ts";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { TransientError } from "../../src/errors.ts";
import { startTracing, type Tracing } from "../../src/tracing.ts";
import { FaultInjector } from "../../src/worker/faultPoints.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";
import { until } from "../support/until.ts";

const exporter = new InMemorySpanExporter();
let tracing: Tracing | undefined;
let env: PipelineEnv;
beforeAll(async () => {
  tracing = startTracing({ processors: [new SimpleSpanProcessor(exporter)] });
  env = await startPipelineEnv({ seed: 15 });
});
afterAll(async () => {
  await env.close();
  await tracing?.shutdown();
});

describe("a document's trace", () => {
  it("spans the upload, the webhook intake, both workers (one crashed), the retry and every external call", async () => {
    const api = new ApiClient(env.config.WEBHOOK_BASE_URL, env.mocks.keys.jwtSecret);
    const userId = "7d5c2f5e-0c1a-4d1e-9a8b-2f1f3c4d5e6f";
    const content = markdownDocument(mulberry32(15), "Traced end to end", 30_000);
    const uploaded = await api.upload({ kind: "document", userId, filename: "traced.md", mime: "text/markdown", bytes: new TextEncoder().encode(content) });

    // The first worker dies (without cleanup) once its first vectors are committed; the second
    // one's first embeddings call fails transiently (a retry), then it finishes the document.
    let crashed = false;
    const first = env.worker({
      workerId: "worker-a",
      leaseSeconds: 1,
      faults: new FaultInjector([{ point: "commit.vectors.after", action: "crash" }]),
      onJobDone: (e) => (crashed ||= e.outcome === "crashed"),
    });
    await first.start();
    await until("the first worker's crash", () => crashed, { timeoutMs: 60_000 });
    await first.stop();
    const second = env.worker({
      workerId: "worker-b",
      faults: new FaultInjector([{ point: "call.openai.embed.before", action: "throw", error: new TransientError("openai_unavailable", "planted 503") }]),
    });
    await second.start();
    expect((await waitForTerminal(env, [uploaded.jobId], 60_000)).get(uploaded.jobId)).toBe("complete");
    await second.stop();

    const { rows } = await env.db.pool.query<{ traceparent: string }>("SELECT traceparent FROM upload_pipeline.upload_jobs WHERE job_id = $1", [
      uploaded.jobId,
    ]);
    const traceId = rows[0]!.traceparent.split("-")[1]!;
    const spans = exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
    const named = (name: string) => spans.filter((s) => s.name === name);

    // The upload request is the trace's root, and the job row names it.
    const [upload] = named("POST /upload");
    expect(upload?.kind).toBe(SpanKind.SERVER);
    expect(upload?.parentSpanContext).toBeUndefined();
    expect(rows[0]!.traceparent.split("-")[2]).toBe(upload!.spanContext().spanId);
    expect(upload?.attributes["http.response.status_code"]).toBe(201);
    expect(named("storage upload").some((s) => s.parentSpanContext?.spanId === upload!.spanContext().spanId)).toBe(true);

    // The webhook delivery continues it, and the intake's calls are its children.
    const [webhook] = named("POST /webhooks/llamaparse");
    expect(webhook?.kind).toBe(SpanKind.SERVER);
    const [intake] = named("parse intake");
    expect(intake?.parentSpanContext?.spanId).toBe(webhook!.spanContext().spanId);
    expect(named("llamaparse download").some((s) => s.parentSpanContext?.spanId === intake!.spanContext().spanId)).toBe(true);

    // Stages of both workers; the embed stage ran on each.
    const stages = spans.filter((s) => s.name.startsWith("stage "));
    expect(new Set(stages.map((s) => s.attributes["worker.id"]))).toEqual(new Set(["worker-a", "worker-b"]));
    expect(new Set(named("stage embed").map((s) => s.attributes["worker.id"]))).toEqual(new Set(["worker-a", "worker-b"]));

    // The retry: a failed stage span and a retry span with the attempt and the error's code.
    const [retry] = named("retry");
    expect(retry?.attributes).toMatchObject({ "worker.id": "worker-b", "error.type": "openai_unavailable", "error.class": "transient" });
    expect(retry?.attributes["job.attempt"]).toBeGreaterThanOrEqual(1);
    expect(named("stage embed").some((s) => s.attributes["error.type"] === "openai_unavailable")).toBe(true);

    // External calls: client spans with the conventions' attributes, under the stage that made them.
    for (const name of ["llamaparse submit", "storage download", "openai embeddings"]) {
      const calls = named(name);
      expect(calls.length, name).toBeGreaterThan(0);
      for (const call of calls) {
        expect(call.kind).toBe(SpanKind.CLIENT);
        expect(call.attributes).toMatchObject({ "http.request.method": expect.any(String), "server.address": "mocks.test", "http.response.status_code": 200 });
        expect(stages.some((s) => s.spanContext().spanId === call.parentSpanContext?.spanId)).toBe(true);
      }
    }
    const embedCalls = named("openai embeddings").map((s) => s.parentSpanContext?.spanId);
    const embedStageOf = (worker: string) =>
      named("stage embed")
        .filter((s) => s.attributes["worker.id"] === worker)
        .map((s) => s.spanContext().spanId);
    expect(embedCalls.some((id) => embedStageOf("worker-a").includes(id!))).toBe(true);
    expect(embedCalls.some((id) => embedStageOf("worker-b").includes(id!))).toBe(true);

    // Nothing secret and no document text in any attribute.
    const attributeText = JSON.stringify(spans.map((s: ReadableSpan) => [s.attributes, s.events]));
    for (const secret of [env.mocks.keys.openai, env.mocks.keys.llamaCloud, env.config.SUPABASE_SERVICE_ROLE_KEY]) expect(attributeText).not.toContain(secret);
    expect(attributeText).not.toContain(content.slice(0, 40));
  }, 120_000);
});
