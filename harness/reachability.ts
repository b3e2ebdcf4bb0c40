/**
 * Reachability, in the style of Antithesis's `sometimes` assertions: named rare events a scenario
 * can require (`"sometimes": [...]`), so a green run cannot be vacuous. Each is observed from
 * the database, the mocks' counters or the worker logs after the run.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Db } from "./invariants/queries.ts";
import type { MockStatsSnapshot } from "../mocks/index.ts";

export const REACHABLE = {
  job_resumed_by_another_worker: "a job was moved on by a worker life other than the one that moved it before (a crash or a lost lease taken over)",
  stale_writer_fenced: "a worker found its lease gone and stopped writing ('lease lost' in a worker log)",
  breaker_opened_and_closed: "a circuit breaker opened and later closed again (worker logs)",
  forged_webhook_refused: "a webhook with a wrong or missing signature was refused",
  replayed_webhook_refused: "a replayed webhook (same or stale bytes) was refused",
  duplicate_webhook_sent: "a genuine webhook was delivered more than once",
  rate_limited: "the OpenAI mock answered 429",
  dead_lettered: "a job ended in a failed_* state",
  postgres_restarted: "the PostgreSQL server restarted mid-run",
  batch_partly_failed: "an OpenAI batch completed with some requests in its error file, and they were sent again",
} as const;

export type ReachableEvent = keyof typeof REACHABLE;
export const REACHABLE_EVENTS = Object.keys(REACHABLE) as [ReachableEvent, ...ReachableEvent[]];

/** What a run left to look at. */
export interface RunTraces {
  pool: Db;
  documentIds: readonly string[];
  mockStats: MockStatsSnapshot;
  postgresRestarts: number;
  /** The folder of this run's worker logs. */
  logDir: string;
  /** Worker lives (`w0.1`…) that were SIGKILLed. */
  killedWorkers: readonly string[];
}

/** Documents whose job a killed worker life moved and another life moved on afterwards. */
export async function takenOverJobs(pool: Db, documentIds: readonly string[], killed: readonly string[]): Promise<Set<string>> {
  const { rows } = await pool.query<{ document_id: string; worker_id: string; previous: string }>(
    `SELECT document_id, worker_id, previous FROM (
       SELECT j.document_id, e.worker_id, lag(e.worker_id) OVER (PARTITION BY e.job_id ORDER BY e.id) AS previous
         FROM upload_pipeline.job_events e JOIN upload_pipeline.upload_jobs j USING (job_id)
        WHERE j.document_id = ANY($1::uuid[]) AND e.lease_token IS NOT NULL) moves
      WHERE previous IS NOT NULL AND worker_id <> previous`,
    [documentIds],
  );
  return new Set(rows.filter((r) => killed.includes(r.previous)).map((r) => r.document_id));
}

async function workerLogs(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return Promise.all(names.filter((n) => n.endsWith(".log")).map((n) => readFile(join(dir, n), "utf8")));
}

/** Every event of {@link REACHABLE} the run reached. */
export async function reachedEvents(run: RunTraces): Promise<ReachableEvent[]> {
  const resumed = await takenOverJobs(run.pool, run.documentIds, run.killedWorkers);
  const { rows: failed } = await run.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM upload_pipeline.upload_jobs WHERE document_id = ANY($1::uuid[]) AND status LIKE 'failed_%'`,
    [run.documentIds],
  );
  const { rows: partly } = await run.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM upload_pipeline.embedding_batches b
      WHERE b.outcome = 'completed' AND b.failed > 0
        AND EXISTS (SELECT 1 FROM upload_pipeline.embedding_batches r WHERE r.job_id = b.job_id AND r.round = b.round + 1)`,
  );
  const logs = await workerLogs(run.logDir);
  const breakerStates = logs.flatMap((log) => [...log.matchAll(/"state":"(open|closed)"[^\n]*circuit breaker changed state/g)].map((m) => m[1]));
  const webhooks = run.mockStats.webhooks.deliveries;
  const reached: Record<ReachableEvent, boolean> = {
    job_resumed_by_another_worker: resumed.size > 0,
    stale_writer_fenced: logs.some((log) => log.includes('"msg":"lease lost')),
    breaker_opened_and_closed: breakerStates.includes("open") && breakerStates.lastIndexOf("closed") > breakerStates.indexOf("open"),
    forged_webhook_refused: (webhooks.forged.rejected ?? 0) > 0,
    replayed_webhook_refused: (webhooks.replay.rejected ?? 0) > 0,
    duplicate_webhook_sent: (webhooks.duplicate.delivered ?? 0) + (webhooks.duplicate.rejected ?? 0) > 0,
    rate_limited: run.mockStats.rateLimited.total > 0,
    dead_lettered: (failed[0]?.n ?? 0) > 0,
    postgres_restarted: run.postgresRestarts > 0,
    batch_partly_failed: (partly[0]?.n ?? 0) > 0,
  };
  return REACHABLE_EVENTS.filter((e) => reached[e]);
}
