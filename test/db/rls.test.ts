/**
 * Row-level security (migration 0007) as Supabase's PostgREST exercises it: `SET LOCAL ROLE` to
 * the JWT's role and the claims in `request.jwt.claims`, on a real PostgreSQL.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { seedJob, type SeededJob } from "../support/fixtures.ts";
import { asRole } from "../support/roles.ts";

let db: TestDatabase;
let a: SeededJob;
let b: SeededJob;

/** One chunk, one vector, one webhook delivery for the job: a row in every table. */
async function fill(job: SeededJob): Promise<void> {
  const chunkId = randomUUID();
  await db.pool.query(
    `INSERT INTO upload_pipeline.document_chunk_buffer (chunk_id, document_id, chunker_name, chunker_version, chunk_ord, text, chunk_sha, token_count)
     VALUES ($1, $2, 'md-heading-token', '1.0.0', 0, 'text', repeat('a', 64), 1)`,
    [chunkId, job.documentId],
  );
  await db.pool.query(
    `INSERT INTO upload_pipeline.document_vector_buffer (chunk_id, embed_model, embed_version, embedding, vector_sha, batch_id)
     VALUES ($1, 'text-embedding-3-small', 'v1', '{0.5,0.5}', repeat('b', 64), $2)`,
    [chunkId, randomUUID()],
  );
  await db.pool.query(
    `INSERT INTO upload_pipeline.webhook_log (delivery_key, job_id, parse_job_id, event_type, event_ts, body_sha256, outcome)
     VALUES ($1, $2, 'pj', 'parse.success', 0, repeat('c', 64), 'applied')`,
    [randomUUID(), job.jobId],
  );
  await db.pool.query("UPDATE upload_pipeline.upload_jobs SET webhook_secret = 'whsec_secret' WHERE job_id = $1", [job.jobId]);
}

const USER_TABLES = ["documents", "upload_jobs", "document_chunk_buffer", "document_vector_buffer", "job_events"] as const;

async function countAs(role: "authenticated" | "service_role", sub: string | undefined, table: string): Promise<number> {
  const column = table === "upload_jobs" ? "job_id" : "1";
  return asRole(db.pool, role, sub, async (c) => (await c.query(`SELECT ${column} FROM upload_pipeline.${table}`)).rowCount ?? 0);
}

beforeAll(async () => {
  db = await createTestDatabase();
  a = await seedJob(db.pool);
  b = await seedJob(db.pool);
  await fill(a);
  await fill(b);
});
afterAll(() => db.drop());

describe("row-level security in upload_pipeline", () => {
  it("is on for every table in the schema", async () => {
    const { rows } = await db.pool.query<{ relname: string; relrowsecurity: boolean }>(
      `SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'upload_pipeline' AND c.relkind IN ('r', 'p') ORDER BY 1`,
    );
    expect(rows.length).toBeGreaterThanOrEqual(7);
    expect(rows.filter((r) => !r.relrowsecurity).map((r) => r.relname)).toEqual([]);
  });

  it("a signed-in user reads only their own rows, in every table that is theirs", async () => {
    for (const table of USER_TABLES) {
      const all = (await db.pool.query(`SELECT 1 FROM upload_pipeline.${table}`)).rowCount!;
      const mine = await countAs("authenticated", a.userId, table);
      expect({ table, mine: mine > 0 && mine < all }).toEqual({ table, mine: true });
    }
    const docs = await asRole(db.pool, "authenticated", a.userId, (c) => c.query("SELECT document_id, user_id FROM upload_pipeline.documents"));
    expect(docs.rows).toEqual([{ document_id: a.documentId, user_id: a.userId }]);
    const jobs = await asRole(db.pool, "authenticated", b.userId, (c) => c.query("SELECT job_id, status FROM upload_pipeline.upload_jobs"));
    expect(jobs.rows).toEqual([{ job_id: b.jobId, status: "uploaded" }]);
  });

  it("keeps the webhook secret, the lease and the webhook log from users", async () => {
    await expect(asRole(db.pool, "authenticated", a.userId, (c) => c.query("SELECT webhook_secret FROM upload_pipeline.upload_jobs"))).rejects.toThrow(
      /permission denied/,
    );
    await expect(asRole(db.pool, "authenticated", a.userId, (c) => c.query("SELECT lease_token FROM upload_pipeline.upload_jobs"))).rejects.toThrow(
      /permission denied/,
    );
    await expect(asRole(db.pool, "authenticated", a.userId, (c) => c.query("SELECT 1 FROM upload_pipeline.webhook_log"))).rejects.toThrow(/permission denied/);
  });

  it("lets users write nothing", async () => {
    await expect(
      asRole(db.pool, "authenticated", a.userId, (c) => c.query("UPDATE upload_pipeline.upload_jobs SET status = 'complete' WHERE job_id = $1", [a.jobId])),
    ).rejects.toThrow(/permission denied/);
    await expect(
      asRole(db.pool, "authenticated", a.userId, (c) => c.query("DELETE FROM upload_pipeline.documents WHERE document_id = $1", [a.documentId])),
    ).rejects.toThrow(/permission denied/);
  });

  it("a user without a sub, or signed in as someone else, sees nothing of theirs", async () => {
    expect(await countAs("authenticated", undefined, "documents")).toBe(0);
    expect(await countAs("authenticated", randomUUID(), "upload_jobs")).toBe(0);
  });

  it("anon reaches nothing in the schema", async () => {
    await expect(asRole(db.pool, "anon", undefined, (c) => c.query("SELECT 1 FROM upload_pipeline.documents"))).rejects.toThrow(/permission denied/);
  });

  it("the service role bypasses it and reads every row, secrets included", async () => {
    for (const table of [...USER_TABLES, "webhook_log", "migrations"]) {
      const all = (await db.pool.query(`SELECT 1 FROM upload_pipeline.${table}`)).rowCount!;
      expect({ table, n: await countAs("service_role", undefined, table) }).toEqual({ table, n: all });
    }
    const secret = await asRole(db.pool, "service_role", undefined, (c) =>
      c.query("SELECT webhook_secret FROM upload_pipeline.upload_jobs WHERE job_id = $1", [a.jobId]),
    );
    expect(secret.rows).toEqual([{ webhook_secret: "whsec_secret" }]);
  });

  it("auth.uid() reads the sub PostgREST puts in request.jwt.claims", async () => {
    const sub = randomUUID();
    const { rows } = await asRole(db.pool, "authenticated", sub, (c) => c.query("SELECT auth.uid() AS uid"));
    expect(rows).toEqual([{ uid: sub }]);
  });
});
