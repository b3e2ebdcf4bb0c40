/**
 * The runner's span collector over real processes: two worker processes export OTLP/HTTP JSON to
 * it, one is SIGKILLed at a fault point holding a document's job and the other finishes that job;
 * the document's spans (API, both workers, external calls) share one trace id, and report.html
 * draws the waterfall with both workers and the kill.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { renderHtml, type RunSummary } from "../../harness/report/index.ts";
import { runScenario, type RunOutcome } from "../../harness/runner.ts";
import { parseScenario } from "../../harness/scenario.ts";
import { SpanCollector, UNFINISHED } from "../../harness/traces.ts";

const spans = new SpanCollector();
let run: RunOutcome;
beforeAll(async () => {
  await spans.start();
  const scenario = parseScenario({
    name: "traced-kill",
    description: "the worker holding document 0 is killed after its first vectors are committed",
    seed: 5,
    corpus: { documents: 2, minKiB: 24, maxKiB: 32 },
    workers: { processes: 2, slots: 1 },
    workerEnv: { EMBED_BATCH_SIZE: "4" },
    crashes: [{ document: 0, at: "commit.vectors.after" }],
  });
  run = await runScenario(scenario, { serverUrl: inject("pgServerUrl"), logDir: mkdtempSync(join(tmpdir(), "scn-traces-")), spans });
}, 180_000);
afterAll(async () => {
  await run?.dropDatabase();
  await spans.stop();
});

describe("the runner's traces", () => {
  it("keep the killed document's trace: the API, both workers and the external calls under one trace id", async () => {
    expect(run.killedWorkers).toHaveLength(1);
    const killed = run.killedWorkers[0]!;
    const trace = run.traces.find((t) => t.spans.some((s) => s.process === killed && s.name === UNFINISHED));
    expect(trace, `a kept trace with the span ${killed} was killed inside`).toBeDefined();
    // Picked first: the document a worker was killed inside, which another worker continued.
    expect(run.traces[0]).toBe(trace);
    expect(trace!.status).toBe("complete");
    const { rows } = await run.pool.query<{ traceparent: string }>("SELECT traceparent FROM upload_pipeline.upload_jobs WHERE document_id = $1", [
      trace!.documentId,
    ]);
    expect(rows[0]!.traceparent.split("-")[1]).toBe(trace!.traceId);

    const names = trace!.spans.map((s) => s.name);
    expect(names).toEqual(
      expect.arrayContaining([
        "POST /upload",
        "POST /webhooks/llamaparse",
        "llamaparse submit",
        "llamaparse download",
        "storage download",
        "openai embeddings",
      ]),
    );
    // The parse is fetched by the API's intake, or by a worker when the webhook came early.
    expect(
      trace!.spans.find((s) => s.name === "parse intake" || s.name === "stage reconcile_parse"),
      "the span that fetched the parse",
    ).toBeDefined();
    expect(trace!.spans.find((s) => s.name === "POST /upload")?.process).toBe("api");
    // The killed worker's embeddings call reached the collector (flushed before its SIGKILL); its
    // embed stage never ended, so it stands as an unfinished span up to the kill.
    const kill = run.timeline.find((k) => k.kind === "kill" && k.worker === killed);
    expect(kill).toBeDefined();
    const workerCalls = trace!.spans.filter((s) => s.kind === "client" && s.process === killed);
    expect(workerCalls.map((s) => s.name)).toContain("openai embeddings");
    expect(workerCalls.every((s) => s.status === 200)).toBe(true);
    const unfinished = trace!.spans.find((s) => s.name === UNFINISHED && s.process === killed);
    expect(unfinished?.endMs).toBe(kill!.atMs);
    // Another worker ran the embed stage to its end.
    const embedders = trace!.spans.filter((s) => s.name === "stage embed").map((s) => s.process);
    expect(embedders.length).toBeGreaterThan(0);
    expect(embedders).not.toContain(killed);
  });

  it("draws that trace as a waterfall in report.html, both workers and the kill on it", () => {
    const killed = run.killedWorkers[0]!;
    const trace = run.traces[0]!;
    const other = trace.spans.find((s) => s.name === "stage embed")!.process;
    const summary: RunSummary = {
      startedAt: new Date().toISOString(),
      finishedAt: new Date().toISOString(),
      durationMs: run.durationMs,
      seed: 5,
      passed: true,
      requiredCoverage: null,
      coverage: null,
      scaling: null,
      scenarios: [
        {
          name: "traced-kill",
          seed: 5,
          passed: true,
          errors: [],
          figures: { documents: 2, workers: 2, durationMs: run.durationMs, throughputDocsPerSec: run.throughput, rateLimited429: 0, kills: run.kills },
          invariants: null,
          coverage: null,
          throughput: null,
          timeline: run.timeline,
          traces: run.traces,
        },
      ],
    };
    const html = renderHtml(summary);
    const svg = new RegExp(`<svg class="waterfall" data-document="${trace.documentId}"[\\s\\S]*?</svg>`).exec(html)?.[0] ?? "";
    expect(svg).toContain(`<g class="span internal failed" data-name="unfinished (worker killed)" data-process="${killed}"`);
    expect(svg).toContain(`<g class="span client" data-name="openai embeddings" data-process="${killed}"`);
    expect(svg).toContain(`data-name="stage embed" data-process="${other}"`);
    expect(svg).toContain('<g class="span client" data-name="openai embeddings"');
    expect(svg).toContain('<g class="span server" data-name="POST /upload" data-process="api"');
    expect(svg).toMatch(new RegExp(`<g class="kill" data-worker="${killed.replace(".", "\\.")}">`));
    expect(html).toContain(`${killed} (killed)`);
  });
});
