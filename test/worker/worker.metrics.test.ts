import { describe, expect, it } from "vitest";
import { createBreakers } from "../../src/resilience/breakers.ts";
import { createWorkerMetrics, serveMetrics } from "../../src/worker/metrics.ts";

describe("worker metrics", () => {
  it("export each breaker's state and how job runs ended, over GET /metrics", async () => {
    const breakers = createBreakers();
    const metrics = createWorkerMetrics(breakers);
    const isolation = breakers.openai.isolate(); // held open by hand, as an operator would
    metrics.jobRun("terminal");
    metrics.jobRun("retry");
    metrics.jobRun("retry");
    const server = await serveMetrics(metrics, 0, "127.0.0.1");
    const { port } = server.address() as { port: number };
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(text).toContain('upload_pipeline_breaker_state{service="openai"} 3');
    expect(text).toContain('upload_pipeline_breaker_state{service="storage"} 0');
    expect(text).toContain('upload_pipeline_worker_job_runs_total{outcome="retry"} 2');
    expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404);
    isolation.dispose();
    expect(await metrics.render()).toContain('upload_pipeline_breaker_state{service="openai"} 0');
    server.close();
  });
});
