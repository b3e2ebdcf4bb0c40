/**
 * `--only claim`: the claim statement with 10^6 complete jobs in the table (issue 12).
 *
 * Two databases from the same template: one with 1,000,000 complete jobs of finished history
 * plus 500 queued ones, one with only the 500 queued ones. In each, the claim runs as the worker
 * runs it (the named prepared statement) until every queued job is leased; the figure is the ratio
 * of the mean claim times, which stays near 1 when the claim never reads finished rows. The plan
 * is printed as Postgres chooses it for the prepared statement once it goes generic
 * (`EXPLAIN (GENERIC_PLAN)`, PostgreSQL 16+) and as executed under `plan_cache_mode =
 * force_generic_plan` with its buffer counts (`EXPLAIN (ANALYZE, BUFFERS)`, rolled back).
 */
import { CLAIM_NEXT_JOB_SQL, claimNextJob } from "../src/worker/queries.ts";
import { seedJobs } from "./queue.ts";
import { createDatabase, figure, round, type BenchContext, type BenchDatabase, type BenchResult } from "./support.ts";

const HISTORY = 1_000_000;

interface ClaimRun {
  history: number;
  queued: number;
  meanClaimMs: number;
  genericPlan: string | undefined;
  executedPlan: string;
}

export async function runClaimBench(ctx: BenchContext): Promise<BenchResult> {
  const started = Date.now();
  const history = ctx.quick ? 100_000 : HISTORY;
  const queued = ctx.quick ? 200 : 500;
  ctx.log(`claim: ${queued} queued jobs, no history`);
  const empty = await inDatabase(ctx, "claim_empty", (db) => measure(db, 0, queued));
  ctx.log(`claim: ${queued} queued jobs beside ${history.toLocaleString("en-US")} complete ones`);
  const full = await inDatabase(ctx, "claim_history", (db) => measure(db, history, queued));
  ctx.log(`claim: ${round(empty.meanClaimMs, 2)} ms → ${round(full.meanClaimMs, 2)} ms per claim`);
  return {
    name: "claim",
    title: `The claim with ${history.toLocaleString("en-US")} complete jobs in the table`,
    figures: [
      figure("claim_ms_empty", "mean claim, no finished jobs", round(empty.meanClaimMs, 2), "ms"),
      figure("claim_ms_history", `mean claim, ${history.toLocaleString("en-US")} complete jobs`, round(full.meanClaimMs, 2), "ms"),
      figure("claim_ratio", "with history ÷ without", round(full.meanClaimMs / empty.meanClaimMs, 2), "ratio"),
    ],
    notes: [
      `${queued} queued jobs claimed one by one with the worker's named prepared statement; the finished history is bulk-loaded (triggers off) and ANALYZEd.`,
      ...(full.genericPlan ? [`EXPLAIN (GENERIC_PLAN):\n${indent(full.genericPlan)}`] : ["EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16+."]),
      `EXPLAIN (ANALYZE, BUFFERS) under plan_cache_mode = force_generic_plan:\n${indent(full.executedPlan)}`,
    ],
    details: { runs: [empty, full] },
    durationMs: Date.now() - started,
  };
}

async function inDatabase<T>(ctx: BenchContext, prefix: string, fn: (db: BenchDatabase) => Promise<T>): Promise<T> {
  const db = await createDatabase(ctx, prefix, 2);
  try {
    return await fn(db);
  } finally {
    await db.drop();
  }
}

async function measure(db: BenchDatabase, history: number, queued: number): Promise<ClaimRun> {
  if (history > 0) {
    // Finished history without firing triggers (a fixture, not how jobs are made).
    await db.pool.query(`
      BEGIN;
      SET LOCAL session_replication_role = replica;
      INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
        SELECT md5(i::text)::uuid, '00000000-0000-4000-8000-000000000001', 'd.md', 'text/markdown', 1, repeat('a', 64), 'x'
          FROM generate_series(1, ${history}) i;
      INSERT INTO upload_pipeline.upload_jobs (job_id, document_id, status, correlation_id, tenant_id, fair_tag)
        SELECT md5('j' || i)::uuid, md5(i::text)::uuid, 'complete', gen_random_uuid(), 't', i
          FROM generate_series(1, ${history}) i;
      COMMIT;`);
  }
  await seedJobs(db.pool, queued); // ANALYZEs the table
  const client = await db.pool.connect();
  try {
    const version = Number((await client.query<{ v: string }>("SELECT current_setting('server_version_num') AS v")).rows[0]!.v);
    const genericPlan = version >= 160000 ? await plan(client, `EXPLAIN (GENERIC_PLAN) ${CLAIM_NEXT_JOB_SQL}`) : undefined;
    await client.query("BEGIN");
    await client.query(`PREPARE claim_plan AS ${CLAIM_NEXT_JOB_SQL}`);
    await client.query("SET LOCAL plan_cache_mode = force_generic_plan");
    const executedPlan = await plan(client, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE claim_plan('bench', 60, NULL)");
    await client.query("ROLLBACK");
    await client.query("DEALLOCATE claim_plan");
    let claimed = 0;
    const t0 = performance.now();
    while (await claimNextJob(client, { workerId: "bench", leaseSeconds: 600 })) claimed += 1;
    const ms = performance.now() - t0;
    if (claimed !== queued) throw new Error(`claimed ${claimed} of ${queued} queued jobs`);
    return { history, queued, meanClaimMs: ms / (claimed + 1), genericPlan, executedPlan };
  } finally {
    client.release();
  }
}

async function plan(client: import("pg").PoolClient, sql: string): Promise<string> {
  const { rows } = await client.query<{ "QUERY PLAN": string }>(sql);
  return rows.map((r) => r["QUERY PLAN"]).join("\n");
}

const indent = (text: string) =>
  text
    .split("\n")
    .map((l) => `      ${l}`)
    .join("\n");
