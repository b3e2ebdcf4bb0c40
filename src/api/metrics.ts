/**
 * Prometheus metrics for `GET /metrics`, one registry per app (tests build many apps).
 *
 * Most figures are read from the database at scrape time rather than counted in this process:
 * the worker processes do the work, and any API replica should report the same numbers.
 *
 * - `upload_pipeline_jobs{state}`: jobs by state (one `GROUP BY` per scrape; every state is
 *   always present, 0 when empty).
 * - `upload_pipeline_stage_duration_seconds{stage}`: time a job spent in `stage` before it moved
 *   on, derived from consecutive `job_events` timestamps. Each scrape reads only the events
 *   appended since the last one (a high-water mark on `job_events.id`, at most
 *   `EVENTS_PER_SCRAPE` rows, the rest next time), so the cost stays flat however long the
 *   table grows. After a restart the first scrapes replay history, which Prometheus sees as a
 *   counter reset. Events younger than `SETTLE_MS` wait for the next scrape: an insert that
 *   took a lower id but committed later would otherwise be skipped for good.
 * - `upload_pipeline_job_failures_total{state}`, `upload_pipeline_manual_retries_total`: from
 *   the same event stream. `upload_pipeline_jobs_retry_scheduled`: jobs waiting on backoff
 *   after a transient error (non-terminal with a `last_error`).
 * - `upload_pipeline_dead_letter_jobs{state,code}`: jobs dead-lettered now, by failed state and
 *   `last_error.code` (a stable error code, so the label set stays small).
 * - `upload_pipeline_embedding_tokens`, `upload_pipeline_cost_usd`: sums of `progress.tokens`
 *   and `progress.cost_usd` over all jobs.
 * - `upload_pipeline_webhook_deliveries_total{reason}`: counted here, as this process answers
 *   them; `reason` is one of a fixed set (`WEBHOOK_REASONS`).
 *
 * Circuit-breaker state lives in the worker processes and is exported by them, not here.
 * No label carries a user id, a document id or a secret.
 */
import type pg from "pg";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { ALL_STATES, FAILED_STATES } from "../state-machine/table.ts";

export const WEBHOOK_REASONS = ["accepted", "duplicate", "early", "forged", "stale", "malformed", "unknown_job", "oversized", "wrong_content_type"] as const;
export type WebhookReason = (typeof WEBHOOK_REASONS)[number];

const EVENTS_PER_SCRAPE = 20_000;
const SETTLE_MS = 2_000;

export interface ApiMetrics {
  registry: Registry;
  webhook(reason: WebhookReason): void;
  /** Refresh the database-derived figures, then render the exposition text. */
  render(): Promise<string>;
}

export function createMetrics(pool: pg.Pool, options: { defaultMetrics?: boolean } = {}): ApiMetrics {
  const registry = new Registry();
  if (options.defaultMetrics) collectDefaultMetrics({ register: registry, prefix: "upload_pipeline_api_" });

  const jobs = new Gauge({
    name: "upload_pipeline_jobs",
    help: "Jobs by state, read from the database at scrape.",
    labelNames: ["state"],
    registers: [registry],
  });
  const stageDuration = new Histogram({
    name: "upload_pipeline_stage_duration_seconds",
    help: "Time a job spent in a state before its next transition, from job_events timestamps.",
    labelNames: ["stage"],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600],
    registers: [registry],
  });
  const failures = new Counter({
    name: "upload_pipeline_job_failures_total",
    help: "Transitions into a failed_* state, from job_events.",
    labelNames: ["state"],
    registers: [registry],
  });
  const manualRetries = new Counter({
    name: "upload_pipeline_manual_retries_total",
    help: "Operator retries (POST /jobs/{id}/retry), from job_events.",
    registers: [registry],
  });
  const deadLetters = new Gauge({
    name: "upload_pipeline_dead_letter_jobs",
    help: "Jobs in a failed_* state now, by state and last_error.code (read from the database at scrape).",
    labelNames: ["state", "code"],
    registers: [registry],
  });
  const retryScheduled = new Gauge({
    name: "upload_pipeline_jobs_retry_scheduled",
    help: "Non-terminal jobs waiting on backoff after a transient error.",
    registers: [registry],
  });
  const tokens = new Gauge({
    name: "upload_pipeline_embedding_tokens",
    help: "Embedding tokens used, summed over all jobs (progress.tokens).",
    registers: [registry],
  });
  const cost = new Gauge({ name: "upload_pipeline_cost_usd", help: "Cost in USD, summed over all jobs (progress.cost_usd).", registers: [registry] });
  const webhooks = new Counter({
    name: "upload_pipeline_webhook_deliveries_total",
    help: "LlamaParse webhook deliveries answered by this process, by outcome.",
    labelNames: ["reason"],
    registers: [registry],
  });
  for (const reason of WEBHOOK_REASONS) webhooks.inc({ reason }, 0);
  for (const state of FAILED_STATES) failures.inc({ state }, 0);

  let lastEventId = "0";
  let refreshing: Promise<void> | undefined;

  async function refresh(): Promise<void> {
    const [byState, byCode, totals, events] = await Promise.all([
      pool.query<{ status: string; n: string }>("SELECT status, count(*) AS n FROM upload_pipeline.upload_jobs GROUP BY status"),
      pool.query<{ status: string; code: string; n: string }>(
        `SELECT status, coalesce(last_error->>'code', 'unknown') AS code, count(*) AS n FROM upload_pipeline.upload_jobs
          WHERE status IN ('failed_parse', 'failed_chunking', 'failed_embedding') GROUP BY 1, 2`,
      ),
      pool.query<{ tokens: string | null; cost: string | null; scheduled: string }>(
        `SELECT sum((progress->>'tokens')::numeric) AS tokens, sum((progress->>'cost_usd')::numeric) AS cost,
                count(*) FILTER (WHERE last_error IS NOT NULL
                                   AND status NOT IN ('complete', 'failed_parse', 'failed_chunking', 'failed_embedding')) AS scheduled
           FROM upload_pipeline.upload_jobs`,
      ),
      pool.query<{ id: string; from_status: string | null; to_status: string; actor: string | null; seconds: number | null }>(
        `SELECT e.id, e.from_status, e.to_status, e.detail->>'actor' AS actor,
                extract(epoch FROM e.at - p.at)::float8 AS seconds
           FROM upload_pipeline.job_events e
           LEFT JOIN LATERAL (SELECT at FROM upload_pipeline.job_events q
                               WHERE q.job_id = e.job_id AND q.id < e.id ORDER BY q.id DESC LIMIT 1) p ON true
          WHERE e.id > $1 AND e.at < clock_timestamp() - make_interval(secs => $2)
          ORDER BY e.id LIMIT $3`,
        [lastEventId, SETTLE_MS / 1000, EVENTS_PER_SCRAPE],
      ),
    ]);
    jobs.reset();
    for (const state of ALL_STATES) jobs.set({ state }, 0);
    for (const row of byState.rows) jobs.set({ state: row.status }, Number(row.n));
    deadLetters.reset();
    for (const row of byCode.rows) deadLetters.set({ state: row.status, code: row.code }, Number(row.n));
    const t = totals.rows[0];
    tokens.set(Number(t?.tokens ?? 0));
    cost.set(Number(t?.cost ?? 0));
    retryScheduled.set(Number(t?.scheduled ?? 0));
    for (const e of events.rows) {
      if (e.from_status && e.seconds !== null && e.seconds >= 0) stageDuration.observe({ stage: e.from_status }, e.seconds);
      if ((FAILED_STATES as readonly string[]).includes(e.to_status)) failures.inc({ state: e.to_status });
      if (e.actor === "operator") manualRetries.inc();
      lastEventId = e.id;
    }
  }

  return {
    registry,
    webhook: (reason) => webhooks.inc({ reason }),
    async render() {
      // One refresh at a time: concurrent scrapes would read the same events twice.
      refreshing ??= refresh().finally(() => (refreshing = undefined));
      await refreshing;
      return registry.metrics();
    },
  };
}
