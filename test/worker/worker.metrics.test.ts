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

  it("with METRICS_TOKEN, answer only that bearer token", async () => {
    const metrics = createWorkerMetrics(createBreakers());
    const server = await serveMetrics(metrics, 0, "127.0.0.1", "scrape-secret-0123456789");
    try {
      const { port } = server.address() as { port: number };
      const scrape = (authorization?: string) => fetch(`http://127.0.0.1:${port}/metrics`, authorization ? { headers: { authorization } } : {});
      const none = await scrape();
      expect(none.status).toBe(401);
      expect(await none.text()).toContain("METRICS_TOKEN");
      expect((await scrape("Bearer another-secret-0123456")).status).toBe(401);
      const ok = await scrape("Bearer scrape-secret-0123456789");
      expect(ok.status).toBe(200);
      expect(await ok.text()).toContain("upload_pipeline_breaker_state");
    } finally {
      server.close();
    }
  });
});
