/**
 * `npm run dlq`: the dead letter, for operators (DATABASE_URL names the database).
 *
 *   npm run dlq -- list [--stage parse|chunking|embedding] [--since 1h] [--limit 100]
 *   npm run dlq -- show <document_id|job_id>
 *   npm run dlq -- retry <document_id|job_id>… [--dry-run]
 *   npm run dlq -- retry --all --stage embedding [--dry-run]
 *
 * A retry follows the same rules as `POST /jobs/{document_id}/retry` (the same function): only
 * a job in a failed_* state, back to the last state it reached, attempts reset. Exit 0 when
 * everything asked for was done, 1 when a job was refused or not found, 2 for a bad command.
 */
import { parseArgs } from "node:util";
import type pg from "pg";
import type { FailedState, JobStatus } from "../state-machine/table.ts";
import { assertRetryable, retryFailedJob, retryTarget } from "../state-machine/retry.ts";
import { PipelineError } from "../errors.ts";
import { operatorPool, parseDuration, runCli, UsageError } from "./cli.ts";

export const DLQ_USAGE = `Usage:
  npm run dlq -- list [--stage parse|chunking|embedding] [--since 1h] [--limit 100]
  npm run dlq -- show <document_id|job_id>
  npm run dlq -- retry <document_id|job_id>… [--dry-run]
  npm run dlq -- retry --all --stage parse|chunking|embedding [--dry-run]`;

const FAILED_OF_STAGE: Record<string, FailedState> = { parse: "failed_parse", chunking: "failed_chunking", embedding: "failed_embedding" };
const ALL_FAILED = Object.values(FAILED_OF_STAGE);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface DeadLetter {
  document_id: string;
  job_id: string;
  status: FailedState;
  code: string | null;
  message: string | null;
  attempts: number;
  failed_at: Date | null;
}

function failedStates(stage: string | undefined): FailedState[] {
  if (stage === undefined) return ALL_FAILED;
  const failed = FAILED_OF_STAGE[stage];
  if (!failed) throw new UsageError(`--stage takes parse, chunking or embedding (got '${stage}')`);
  return [failed];
}

/** Dead-lettered jobs, most recently failed first. */
export async function listDeadLetters(pool: pg.Pool, opts: { stage?: string; sinceSeconds?: number; limit?: number } = {}): Promise<DeadLetter[]> {
  const { rows } = await pool.query<DeadLetter>(
    `SELECT j.document_id, j.job_id, j.status, j.last_error->>'code' AS code, j.last_error->>'message' AS message, j.attempts, f.at AS failed_at
       FROM upload_pipeline.upload_jobs j
       LEFT JOIN LATERAL (SELECT e.at FROM upload_pipeline.job_events e
                           WHERE e.job_id = j.job_id AND e.to_status = j.status ORDER BY e.id DESC LIMIT 1) f ON true
      WHERE j.status = ANY($1) AND ($2::float8 IS NULL OR f.at >= now() - make_interval(secs => $2))
      ORDER BY f.at DESC NULLS LAST, j.job_id LIMIT $3`,
    [failedStates(opts.stage), opts.sinceSeconds ?? null, opts.limit ?? 100],
  );
  return rows;
}

async function findJob(
  pool: pg.Pool,
  id: string,
): Promise<{ job_id: string; document_id: string; status: JobStatus; last_error: Record<string, unknown> | null } | undefined> {
  if (!UUID.test(id)) throw new UsageError(`'${id}' is not a document_id or job_id (a UUID)`);
  // A document may have a model migration's job beside its upload's (migration 0011): a job id
  // names one exactly; a document id names its dead-lettered job first, else the upload's.
  const { rows } = await pool.query(
    `SELECT job_id, document_id, status, last_error FROM upload_pipeline.upload_jobs WHERE job_id = $1 OR document_id = $1
      ORDER BY (job_id = $1) DESC, (status LIKE 'failed_%') DESC, (profile_id IS NOT NULL), job_id LIMIT 1`,
    [id],
  );
  return rows[0];
}

/** Everything an operator needs about one job: the job, its last error, its events, what the buffers hold. */
export async function showJob(pool: pg.Pool, id: string) {
  const job = await findJob(pool, id);
  if (!job) return undefined;
  const [row, events, chunks, vectors] = await Promise.all([
    pool.query(
      `SELECT d.document_id, d.user_id, d.filename, d.mime, d.bytes, d.raw_path, d.parsed_path, j.job_id, j.status, j.attempts,
              j.max_attempts, j.next_attempt_at, j.last_error, j.parse_job_id, j.correlation_id, j.progress, j.profile_id, j.created_at, j.updated_at
         FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d USING (document_id) WHERE j.job_id = $1`,
      [job.job_id],
    ),
    pool.query("SELECT id, at, from_status, to_status, worker_id, attempt, detail FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id", [job.job_id]),
    pool.query<{ chunker: string; chunks: number }>(
      `SELECT chunker_name || ' ' || chunker_version AS chunker, count(*)::int AS chunks
         FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1 GROUP BY 1 ORDER BY 1`,
      [job.document_id],
    ),
    pool.query<{ model: string; vectors: number }>(
      `SELECT v.embed_model || ' ' || v.embed_version AS model, count(*)::int AS vectors
         FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
        WHERE c.document_id = $1 GROUP BY 1 ORDER BY 1`,
      [job.document_id],
    ),
  ]);
  return { job: row.rows[0], events: events.rows, buffers: { chunks: chunks.rows, vectors: vectors.rows } };
}

export interface RetryLine {
  id: string;
  ok: boolean;
  text: string;
}

/** Retry each id (document or job), or say what would happen with `dryRun`. */
export async function retryJobs(pool: pg.Pool, ids: string[], { dryRun = false } = {}): Promise<RetryLine[]> {
  const lines: RetryLine[] = [];
  for (const id of ids) {
    const job = await findJob(pool, id);
    if (!job) {
      lines.push({ id, ok: false, text: `${id}: no such document or job` });
      continue;
    }
    try {
      if (dryRun) {
        assertRetryable(job.status);
        const to = await retryTarget(pool, job.job_id, job.status, job.last_error);
        lines.push({ id, ok: true, text: `${job.document_id}: would retry ${job.status} → ${to}` });
      } else {
        const r = await retryFailedJob(pool, { jobId: job.job_id, status: job.status, lastError: job.last_error }, "dlq-cli");
        lines.push({ id, ok: true, text: `${job.document_id}: retried ${r.from} → ${r.to}` });
      }
    } catch (err) {
      if (!(err instanceof PipelineError)) throw err;
      lines.push({ id, ok: false, text: `${job.document_id}: refused (${err.code}): ${err.message}` });
    }
  }
  return lines;
}

function table(rows: DeadLetter[]): string {
  if (rows.length === 0) return "no dead-lettered jobs";
  const head = ["document_id", "status", "code", "attempts", "failed_at", "message"];
  const body = rows.map((r) => [r.document_id, r.status, r.code ?? "-", String(r.attempts), r.failed_at?.toISOString() ?? "-", (r.message ?? "").slice(0, 80)]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  return [head, ...body].map((cells) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")).join("\n");
}

export async function dlqMain(argv: string[], env: NodeJS.ProcessEnv = process.env, out: (line: string) => void = console.log): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { stage: { type: "string" }, since: { type: "string" }, limit: { type: "string" }, all: { type: "boolean" }, "dry-run": { type: "boolean" } },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  const [command, ...ids] = positionals;
  if (command === "list") {
    if (ids.length > 0) throw new UsageError(`list takes no ids (got '${ids[0]}')`);
    const limit = values.limit === undefined ? 100 : Number(values.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError(`--limit takes a whole number from 1 to 10000 (got '${values.limit}')`);
    const sinceSeconds = values.since === undefined ? undefined : parseDuration("--since", values.since);
    failedStates(values.stage);
    const pool = operatorPool("npm run dlq", env);
    try {
      out(table(await listDeadLetters(pool, { ...(values.stage ? { stage: values.stage } : {}), ...(sinceSeconds ? { sinceSeconds } : {}), limit })));
    } finally {
      await pool.end();
    }
    return 0;
  }
  if (command === "show") {
    if (ids.length !== 1) throw new UsageError("show takes one document_id or job_id");
    const pool = operatorPool("npm run dlq", env);
    try {
      const shown = await showJob(pool, ids[0]!);
      if (!shown) {
        out(`${ids[0]}: no such document or job`);
        return 1;
      }
      out(JSON.stringify(shown, null, 2));
    } finally {
      await pool.end();
    }
    return 0;
  }
  if (command === "retry") {
    if (values.all && ids.length > 0) throw new UsageError("retry takes ids or --all --stage S, not both");
    if (!values.all && ids.length === 0) throw new UsageError("retry needs document ids, or --all --stage parse|chunking|embedding");
    if (values.all && values.stage === undefined) throw new UsageError("retry --all needs --stage parse|chunking|embedding (one stage at a time)");
    const [failed] = values.all ? failedStates(values.stage) : [undefined];
    const pool = operatorPool("npm run dlq", env);
    try {
      const targets = failed
        ? (await pool.query<{ job_id: string }>("SELECT job_id FROM upload_pipeline.upload_jobs WHERE status = $1 ORDER BY job_id", [failed])).rows.map(
            (r) => r.job_id,
          )
        : ids;
      const lines = await retryJobs(pool, targets, { dryRun: values["dry-run"] ?? false });
      for (const l of lines) out(l.text);
      if (lines.length === 0) out(`no job in ${failed}`);
      return lines.every((l) => l.ok) ? 0 : 1;
    } finally {
      await pool.end();
    }
  }
  throw new UsageError(command === undefined ? "a command is needed: list, show or retry" : `unknown command '${command}'`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runCli("npm run dlq", DLQ_USAGE, () => dlqMain(process.argv.slice(2)));
}
