/**
 * `npm run prune -- --older-than 30d [--dry-run] [--no-summary] [--batch 5000]`: retention.
 *
 * What grows without bound and is no longer needed once a document is long finished:
 * - `job_events` of jobs `complete` for longer than `--older-than`: deleted, except each job's
 *   last event (its summary: chunks, vectors, tokens, cost), unless `--no-summary`;
 * - `webhook_log` deliveries older than `--older-than`, and never younger than the replay window
 *   (±300 s) plus a day's margin, so a replayed `event_id` is still refused by its timestamp.
 *
 * Never touched: any row of a job that is not `complete` (running, waiting, or dead-lettered and
 * waiting for an operator), `upload_jobs` and `documents` rows (one per document: they make an
 * upload idempotent and answer GET /jobs), and the chunk and vector buffers (the product).
 *
 * Deletes in bounded batches walking the primary key (`--batch` rows examined per statement, each
 * its own transaction), so it never holds long locks or builds one huge transaction.
 */
import { parseArgs } from "node:util";
import type pg from "pg";
import { WEBHOOK_TOLERANCE_SECONDS } from "../api/routes/webhook.ts";
import { operatorPool, parseDuration, runCli, UsageError } from "./cli.ts";

export const PRUNE_USAGE = "Usage: npm run prune -- --older-than 30d [--dry-run] [--no-summary] [--batch 5000]";

/** webhook_log rows younger than this are kept whatever --older-than says. */
export const WEBHOOK_LOG_MIN_AGE_SECONDS = WEBHOOK_TOLERANCE_SECONDS + 86_400;

export interface PruneOptions {
  olderThanSeconds: number;
  dryRun?: boolean;
  keepSummary?: boolean;
  batch?: number;
  /** Called after each batch (progress on the terminal). */
  onBatch?: (table: string, deleted: number) => void;
}

export interface PruneResult {
  job_events: number;
  webhook_log: number;
  batches: number;
}

/** One batch: rows with id > $1 (at most $2 of them), of which those matching are deleted (or counted). */
function batchSql(table: "job_events" | "webhook_log", doomed: string, dryRun: boolean): string {
  return `WITH batch AS (SELECT id FROM upload_pipeline.${table} WHERE id > $1 ORDER BY id LIMIT $2),
               doomed AS (${doomed}),
               gone AS (${dryRun ? "SELECT id FROM doomed" : `DELETE FROM upload_pipeline.${table} WHERE id IN (SELECT id FROM doomed) RETURNING id`})
          SELECT (SELECT max(id) FROM batch)::text AS last, (SELECT count(*) FROM gone)::int AS n`;
}

const DOOMED_EVENTS = `
  SELECT e.id FROM batch b JOIN upload_pipeline.job_events e ON e.id = b.id
    JOIN upload_pipeline.upload_jobs j ON j.job_id = e.job_id
   WHERE j.status = 'complete' AND j.updated_at < now() - make_interval(secs => $3)
     AND (NOT $4::boolean OR e.id < (SELECT max(x.id) FROM upload_pipeline.job_events x WHERE x.job_id = e.job_id))`;

const DOOMED_WEBHOOKS = `
  SELECT w.id FROM batch b JOIN upload_pipeline.webhook_log w ON w.id = b.id
    LEFT JOIN upload_pipeline.upload_jobs j ON j.job_id = w.job_id
   WHERE w.received_at < now() - make_interval(secs => $3)
     AND (j.job_id IS NULL OR j.status IN ('complete', 'failed_parse', 'failed_chunking', 'failed_embedding'))`;

export async function prune(pool: pg.Pool, opts: PruneOptions): Promise<PruneResult> {
  const batch = opts.batch ?? 5_000;
  const result: PruneResult = { job_events: 0, webhook_log: 0, batches: 0 };
  const plans = [
    {
      table: "job_events" as const,
      sql: batchSql("job_events", DOOMED_EVENTS, opts.dryRun ?? false),
      extra: [opts.olderThanSeconds, opts.keepSummary ?? true],
    },
    {
      table: "webhook_log" as const,
      sql: batchSql("webhook_log", DOOMED_WEBHOOKS, opts.dryRun ?? false),
      extra: [Math.max(opts.olderThanSeconds, WEBHOOK_LOG_MIN_AGE_SECONDS)],
    },
  ];
  for (const plan of plans) {
    for (let after = "0"; ; ) {
      const { rows } = await pool.query<{ last: string | null; n: number }>(plan.sql, [after, batch, ...plan.extra]);
      const { last, n } = rows[0]!;
      if (last === null) break;
      result[plan.table] += n;
      result.batches += 1;
      opts.onBatch?.(plan.table, n);
      after = last;
    }
  }
  return result;
}

export async function pruneMain(argv: string[], env: NodeJS.ProcessEnv = process.env, out: (line: string) => void = console.log): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { "older-than": { type: "string" }, "dry-run": { type: "boolean" }, "no-summary": { type: "boolean" }, batch: { type: "string" } },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values["older-than"] === undefined) throw new UsageError("--older-than is required, e.g. --older-than 30d");
  const olderThanSeconds = parseDuration("--older-than", values["older-than"]);
  const batch = values.batch === undefined ? 5_000 : Number(values.batch);
  if (!Number.isInteger(batch) || batch < 100 || batch > 100_000)
    throw new UsageError(`--batch takes a whole number from 100 to 100000 (got '${values.batch}')`);
  const dryRun = values["dry-run"] ?? false;
  const pool = operatorPool("npm run prune", env);
  try {
    const r = await prune(pool, { olderThanSeconds, dryRun, keepSummary: !values["no-summary"], batch });
    const verb = dryRun ? "would delete" : "deleted";
    out(`${verb} ${r.job_events} job_events rows and ${r.webhook_log} webhook_log rows (${r.batches} batches of at most ${batch})`);
  } finally {
    await pool.end();
  }
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runCli("npm run prune", PRUNE_USAGE, () => pruneMain(process.argv.slice(2)));
}
