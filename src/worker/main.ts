/**
 * `npm run worker`: one worker process. Reads the environment (see the README's configuration
 * table), connects to DATABASE_URL (or starts an embedded PostgreSQL when it is unset, for local
 * trials), and runs WORKER_CONCURRENCY slots until SIGTERM/SIGINT.
 */
import { flushCompileCache, getCompileCacheDir } from "node:module";
import { hostname } from "node:os";
import { loadConfigOrExit } from "../config.ts";
import { createPool } from "../db/pool.ts";
import { migrate } from "../db/migrate.ts";
import { provisionDatabase } from "../db/provision.ts";
import { createLogger } from "../logger.ts";
import { createPipelineServices } from "../services.ts";
import { PIPELINE_STAGES } from "../stages/index.ts";
import { BaseWorker } from "./BaseWorker.ts";
import { reportServiceConditions } from "./serviceConditions.ts";
import { faultPointsFromEnv } from "./faultPoints.ts";
import { heapTrimmer } from "./heapTrim.ts";
import { reportWakeUp } from "./listenProbe.ts";
import { missingWorkerNodeFlags } from "./nodeFlags.ts";
import { createWorkerMetrics, serveMetrics } from "./metrics.ts";
import { stopOnSignals } from "../signals.ts";
import { flushBounded, startTracing } from "../tracing.ts";

const config = loadConfigOrExit("worker");
const log = createLogger({ level: config.LOG_LEVEL, name: "worker" });
const missingFlags = missingWorkerNodeFlags(process.execArgv, process.env.NODE_OPTIONS);
if (missingFlags.length > 0) {
  log.warn(
    { missing: missingFlags },
    `started without ${missingFlags.join(" ")}: start workers with \`npm run worker\` (src/worker/nodeFlags.ts), or expect more memory`,
  );
}
if (getCompileCacheDir() === undefined) {
  const why = process.env.NODE_COMPILE_CACHE ? "its NODE_COMPILE_CACHE folder cannot be written" : "started without NODE_COMPILE_CACHE";
  log.warn(`compile cache off (${why}): start workers with \`npm run worker\` (src/worker/nodeFlags.ts), or expect a slower start and 30 MiB more memory`);
}
if (process.env.MALLOC_MMAP_THRESHOLD_ === undefined) {
  log.warn(
    "started without MALLOC_MMAP_THRESHOLD_: start workers with `npm run worker` (src/worker/nodeFlags.ts), or expect 15-20 MiB more memory while embedding",
  );
}
const tracing = startTracing({ endpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT, serviceName: "upload-pipeline-worker", instanceId: config.WORKER_ID });
const db = await provisionDatabase({ databaseUrl: config.DATABASE_URL });
if (db.kind === "embedded") {
  log.warn("DATABASE_URL is not set: using a private embedded PostgreSQL (nothing else can see its jobs)");
  await migrate(db.url, { log: (line) => log.info(line) });
}
const pool = createPool(db.url, config.WORKER_CONCURRENCY + 4, config);
// A dropped idle connection (Postgres restart) must not kill the process; the next query reconnects.
pool.on("error", (err) => log.warn({ err: err.message }, "idle database connection lost"));

const services = createPipelineServices(config, { db: pool, holder: config.WORKER_ID ?? `${hostname()}:${process.pid}`, log });
const metrics = createWorkerMetrics(services.breakers, { defaultMetrics: true });
const metricsServer = config.METRICS_PORT ? await serveMetrics(metrics, config.METRICS_PORT, undefined, config.METRICS_TOKEN) : undefined;
const heapTrim = heapTrimmer();
const worker = new BaseWorker({
  pool,
  databaseUrl: config.DATABASE_LISTEN_URL ?? db.url,
  stages: PIPELINE_STAGES,
  services,
  log,
  workerId: config.WORKER_ID,
  concurrency: config.WORKER_CONCURRENCY,
  leaseSeconds: config.LEASE_SECONDS,
  retryBaseMs: config.RETRY_BASE_MS,
  retryMaxMs: config.RETRY_MAX_MS,
  pollIntervalMs: config.POLL_INTERVAL_MS,
  shutdownTimeoutMs: config.SHUTDOWN_TIMEOUT_MS,
  stageDeadlineMs: config.STAGE_DEADLINE_SECONDS * 1000,
  faults: faultPointsFromEnv(process.env.UPLOAD_PIPELINE_CRASH_AT, process.env.UPLOAD_PIPELINE_FREEZE_AT, process.env.UPLOAD_PIPELINE_CRASH_ONCE_DIR, () =>
    flushBounded(tracing),
  ),
  onJobDone: ({ outcome }) => metrics.jobRun(outcome),
  onStageDone: ({ durationMs, log: stageLog }) => {
    const trimMs = heapTrim.afterStage(durationMs);
    if (trimMs !== undefined) stageLog.debug({ gc_ms: trimMs }, "returned V8's pooled heap pages after a long stage");
  },
});
for (const breaker of Object.values(services.breakers)) {
  breaker.onStateChange((state, service) => log.warn({ service, state }, "circuit breaker changed state"));
}
reportServiceConditions(services.breakers, { pool, log, metrics, workerId: worker.workerId });
await worker.start();
// Node writes the compile cache at exit; written now, a worker that is killed still leaves it
// for the next start.
flushCompileCache();
// Says at start-up whether idle slots wake on NOTIFY or fall back to polling (not awaited: the
// signal handlers below must be in place at once).
void reportWakeUp(config.DATABASE_LISTEN_URL ?? db.url, pool, log, {
  listenUrlSet: config.DATABASE_LISTEN_URL !== undefined,
  pollIntervalMs: config.POLL_INTERVAL_MS,
});
stopOnSignals(
  async () => {
    await worker.stop();
    metricsServer?.close();
    await pool.end();
    await tracing?.shutdown();
    await db.stop();
  },
  log,
  config.SHUTDOWN_TIMEOUT_MS + 5_000,
);
