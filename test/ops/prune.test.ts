/**
 * `npm run prune` over a database holding a million old rows: it deletes what retention allows
 * in bounded batches, keeps each finished job's summary event, and never touches a row of an
 * unfinished or dead-lettered job, nor a webhook delivery inside the replay window.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { prune, pruneMain, WEBHOOK_LOG_MIN_AGE_SECONDS } from "../../src/ops/prune.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { seedJob, type SeededJob } from "../support/fixtures.ts";

const OLD_EVENTS = 1_000_000;
const DAY = 86_400;
let db: TestDatabase;
let done: SeededJob;
let recentDone: SeededJob;
let running: SeededJob;
let failed: SeededJob;

async function count(sql: string, params: unknown[] = []): Promise<number> {
  return Number((await db.pool.query<{ n: string }>(sql, params)).rows[0]!.n);
}
const eventsOf = (job: SeededJob) => count("SELECT count(*) AS n FROM upload_pipeline.job_events WHERE job_id = $1", [job.jobId]);

beforeAll(async () => {
  db = await createTestDatabase();
  done = await seedJob(db.pool, { status: "complete" });
  recentDone = await seedJob(db.pool, { status: "complete" });
  running = await seedJob(db.pool, { status: "embedding_in_progress" });
  failed = await seedJob(db.pool, { status: "failed_embedding" });
  await db.pool.query("UPDATE upload_pipeline.upload_jobs SET updated_at = now() - interval '90 days' WHERE job_id = ANY($1)", [
    [done.jobId, running.jobId, failed.jobId],
  ]);
  // A million old events on the long-finished job (generate_series: one statement), and a few
  // hundred on each of the others, all 90 days old.
  await db.pool.query(
    `INSERT INTO upload_pipeline.job_events (job_id, from_status, to_status, at)
     SELECT $1, 'embedding_in_progress', 'embedding_in_progress', now() - interval '90 days' FROM generate_series(1, $2)`,
    [done.jobId, OLD_EVENTS],
  );
  await db.pool.query(
    `INSERT INTO upload_pipeline.job_events (job_id, from_status, to_status, at)
     SELECT j, 'chunking', 'chunking', now() - interval '90 days' FROM unnest($1::uuid[]) j, generate_series(1, 300)`,
    [[recentDone.jobId, running.jobId, failed.jobId]],
  );
  // The summary: each finished job's last event.
  await db.pool.query(
    `INSERT INTO upload_pipeline.job_events (job_id, from_status, to_status, detail, at)
     SELECT j, 'embeddings_stored', 'complete', '{"chunks": 3}', now() - interval '90 days' FROM unnest($1::uuid[]) j`,
    [[done.jobId, recentDone.jobId]],
  );
  // Webhook deliveries: old ones of finished and running jobs, and one inside the replay window.
  await db.pool.query(
    `INSERT INTO upload_pipeline.webhook_log (delivery_key, job_id, parse_job_id, event_type, event_ts, body_sha256, outcome, received_at)
     SELECT 'old-' || j || '-' || i, j, 'pj', 'parse.success', 0, repeat('c', 64), 'applied', now() - interval '90 days'
       FROM unnest($1::uuid[]) j, generate_series(1, 100) i
     UNION ALL
     SELECT 'fresh-' || i, $2, 'pj', 'parse.success', 0, repeat('c', 64), 'applied', now() - make_interval(secs => $3)
       FROM generate_series(1, 10) i`,
    [[done.jobId, running.jobId], done.jobId, WEBHOOK_LOG_MIN_AGE_SECONDS - 600],
  );
  // A production table of this size has been vacuumed and analysed; a freshly bulk-loaded one
  // has neither (no statistics, no hint bits), which made the first pass 3x slower.
  await db.pool.query("VACUUM ANALYZE upload_pipeline.job_events, upload_pipeline.webhook_log, upload_pipeline.upload_jobs");
}, 120_000);
afterAll(() => db.drop());

describe("npm run prune", () => {
  it("--dry-run counts what would go and deletes nothing", async () => {
    const lines: string[] = [];
    expect(await pruneMain(["--older-than", "30d", "--dry-run", "--batch", "20000"], { DATABASE_URL: db.url }, (l) => lines.push(l))).toBe(0);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^would delete ${OLD_EVENTS + 1} job_events rows and 100 webhook_log rows \\(\\d+ batches of at most 20000\\)$`));
    expect(await eventsOf(done)).toBe(OLD_EVENTS + 2);
  }, 120_000);

  it("deletes a million old events of a long-finished job in bounded batches, keeping its summary", async () => {
    const batches: number[] = [];
    const result = await prune(db.pool, { olderThanSeconds: 30 * DAY, batch: 20_000, onBatch: (_t, n) => batches.push(n) });
    // Created + a million + the summary: all but the summary go.
    expect(result.job_events).toBe(OLD_EVENTS + 1);
    expect(Math.max(...batches)).toBeLessThanOrEqual(20_000);
    expect(await eventsOf(done)).toBe(1);
    const { rows } = await db.pool.query("SELECT to_status, detail FROM upload_pipeline.job_events WHERE job_id = $1", [done.jobId]);
    expect(rows).toEqual([{ to_status: "complete", detail: { chunks: 3 } }]);
  }, 120_000);

  it("never touches an unfinished or dead-lettered job, a recently finished one, or a delivery inside the replay window", async () => {
    // recentDone finished today (updated_at now): none of its events go.
    expect(await eventsOf(recentDone)).toBe(302);
    expect(await eventsOf(running)).toBe(301);
    expect(await eventsOf(failed)).toBe(301);
    expect(await count("SELECT count(*) AS n FROM upload_pipeline.webhook_log WHERE job_id = $1", [running.jobId])).toBe(100);
    expect(await count("SELECT count(*) AS n FROM upload_pipeline.webhook_log WHERE delivery_key LIKE 'fresh-%'")).toBe(10);
    expect(await count("SELECT count(*) AS n FROM upload_pipeline.webhook_log WHERE delivery_key LIKE 'old-' || $1 || '%'", [done.jobId])).toBe(0);
    // The job and document rows stay: an upload of the same file must still find its job.
    expect(await count("SELECT count(*) AS n FROM upload_pipeline.upload_jobs WHERE job_id = $1", [done.jobId])).toBe(1);
  });

  it("a second run finds nothing left to delete", async () => {
    expect(await prune(db.pool, { olderThanSeconds: 30 * DAY })).toMatchObject({ job_events: 0, webhook_log: 0 });
  });

  it("a short --older-than never reaches into the replay window: a delivery younger than it plus a day stays", async () => {
    expect(await prune(db.pool, { olderThanSeconds: 3600 })).toMatchObject({ webhook_log: 0 });
    expect(await count("SELECT count(*) AS n FROM upload_pipeline.webhook_log WHERE delivery_key LIKE 'fresh-%'")).toBe(10);
  });

  it("refuses a missing or bad --older-than and a bad --batch, naming the flag", async () => {
    const env = { DATABASE_URL: db.url };
    await expect(pruneMain([], env)).rejects.toThrow("--older-than is required, e.g. --older-than 30d");
    await expect(pruneMain(["--older-than", "30 days"], env)).rejects.toThrow("--older-than takes a duration such as 90s, 30m, 1h or 30d (got '30 days')");
    await expect(pruneMain(["--older-than", "30d", "--batch", "5"], env)).rejects.toThrow("--batch takes a whole number from 100 to 100000 (got '5')");
  });
});
