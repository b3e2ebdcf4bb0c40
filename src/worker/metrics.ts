/**
 * A worker process's own Prometheus metrics, served on `METRICS_PORT` when it is set: what only
 * this process knows. Database-wide figures (jobs by state, stage durations, tokens, cost) are
 * the API's `/metrics`, so every replica reports the same numbers.
 *
 * - `upload_pipeline_breaker_state{service}`: 0 closed, 1 open, 2 half-open, 3 isolated;
 * - `upload_pipeline_worker_job_runs_total{outcome}`: how each claimed run ended (released,
 *   retry, parked, failed, terminal, snoozed, lost, crashed, stalled);
 * - `upload_pipeline_service_refusing{service}`: 1 while the service refuses the account;
 * - `upload_pipeline_service_condition_changes_total{service,state}`: each start and end of a refusal.
 */
import { createServer, type Server } from "node:http";
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import { bearerToken, sameSecret } from "../bearer.ts";
import { BREAKER_STATE_VALUE, SERVICES, type Breakers } from "../resilience/breakers.ts";

export interface WorkerMetrics {
  registry: Registry;
  jobRun(outcome: string): void;
  /** A service started (`refusing`) or stopped (`ok`) refusing the account. */
  serviceConditionChanged(service: string, state: "refusing" | "ok"): void;
  render(): Promise<string>;
}

export function createWorkerMetrics(breakers: Breakers, options: { defaultMetrics?: boolean } = {}): WorkerMetrics {
  const registry = new Registry();
  if (options.defaultMetrics) collectDefaultMetrics({ register: registry, prefix: "upload_pipeline_worker_" });
  new Gauge({
    name: "upload_pipeline_breaker_state",
    help: "Circuit breaker state per service: 0 closed, 1 open, 2 half-open, 3 isolated.",
    labelNames: ["service"],
    registers: [registry],
    collect() {
      for (const service of SERVICES) this.set({ service }, BREAKER_STATE_VALUE[breakers[service].state]);
    },
  });
  new Gauge({
    name: "upload_pipeline_service_refusing",
    help: "1 while the service refuses the account (wrong key, no quota or credits, missing bucket): jobs that need it are parked.",
    labelNames: ["service"],
    registers: [registry],
    collect() {
      for (const service of SERVICES) this.set({ service }, breakers[service].refusal ? 1 : 0);
    },
  });
  const conditionChanges = new Counter({
    name: "upload_pipeline_service_condition_changes_total",
    help: "Times a service started (refusing) or stopped (ok) refusing the account, as this worker saw it.",
    labelNames: ["service", "state"],
    registers: [registry],
  });
  const runs = new Counter({
    name: "upload_pipeline_worker_job_runs_total",
    help: "Claimed job runs by how they ended.",
    labelNames: ["outcome"],
    registers: [registry],
  });
  return {
    registry,
    jobRun: (outcome) => runs.inc({ outcome }),
    serviceConditionChanged: (service, state) => conditionChanges.inc({ service, state }),
    render: () => registry.metrics(),
  };
}

/**
 * Serve `GET /metrics` on `port` (loopback and pod networks alike: bind as configured); with a
 * `token` (`METRICS_TOKEN`), only for `Authorization: Bearer <token>`.
 */
export function serveMetrics(metrics: WorkerMetrics, port: number, host = "0.0.0.0", token?: string): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== "GET" || req.url !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("GET /metrics\n");
      return;
    }
    if (token !== undefined && !sameSecret(bearerToken(req.headers.authorization), token)) {
      res
        .writeHead(401, { "content-type": "text/plain", "www-authenticate": 'Bearer realm="metrics"' })
        .end("GET /metrics needs 'Authorization: Bearer <METRICS_TOKEN>'\n");
      return;
    }
    metrics.render().then(
      (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
      () => res.writeHead(500).end(),
    );
  });
  return new Promise((resolve) => server.listen(port, host, () => resolve(server)));
}
