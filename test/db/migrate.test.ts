import { spawnSync } from "node:child_process";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { withDatabase } from "../../src/db/provision.ts";
import { loadMigrations, migrate } from "../../src/db/migrate.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { ALL_STATES } from "../../src/state-machine/table.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

async function columns(pool: pg.Pool, table: string): Promise<string[]> {
  const { rows } = await pool.query<{ column_name: string }>(
    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'upload_pipeline' AND table_name = $1 ORDER BY ordinal_position",
    [table],
  );
  return rows.map((r) => r.column_name);
}

describe("migrations", () => {
  it("are already applied to the template and a second run applies nothing", async () => {
    const applied = await migrate(db.url, { log: () => {} });
    expect(applied).toEqual([]);
    const { rows } = await db.pool.query("SELECT id, name FROM upload_pipeline.migrations ORDER BY id");
    expect(rows.map((r) => r.name)).toEqual((await loadMigrations()).map((m) => m.name));
  });

  it("create SPEC §3's tables and columns", async () => {
    expect(await columns(db.pool, "documents")).toEqual(
      expect.arrayContaining(["document_id", "user_id", "filename", "mime", "bytes", "file_sha256", "raw_path", "parsed_path", "parsed_sha256", "created_at"]),
    );
    expect(await columns(db.pool, "upload_jobs")).toEqual(
      expect.arrayContaining([
        "job_id",
        "document_id",
        "status",
        "progress",
        "attempts",
        "max_attempts",
        "next_attempt_at",
        "locked_by",
        "lease_expires_at",
        "lease_token",
        "last_error",
        "webhook_secret",
        "parse_job_id",
        "correlation_id",
        "created_at",
        "updated_at",
      ]),
    );
    expect(await columns(db.pool, "document_chunk_buffer")).toEqual(
      expect.arrayContaining(["chunk_id", "document_id", "chunker_name", "chunker_version", "chunk_ord", "text", "chunk_sha", "token_count", "meta"]),
    );
    expect(await columns(db.pool, "document_vector_buffer")).toEqual(
      expect.arrayContaining(["chunk_id", "embed_model", "embed_version", "embedding", "vector_sha", "batch_id", "created_at"]),
    );
    expect(await columns(db.pool, "job_events")).toEqual(
      expect.arrayContaining(["id", "job_id", "from_status", "to_status", "worker_id", "lease_token", "attempt", "correlation_id", "at", "detail"]),
    );
    expect(await columns(db.pool, "webhook_log")).toContain("delivery_key");
  });

  it("enforce both buffer uniqueness rules", async () => {
    const { rows } = await db.pool.query<{ def: string }>(
      `SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c
         JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = 'upload_pipeline' AND c.contype = 'u'`,
    );
    const defs = rows.map((r) => r.def);
    expect(defs).toContain("UNIQUE (document_id, chunker_name, chunker_version, chunk_ord)");
    expect(defs).toContain("UNIQUE (chunk_id, embed_model, embed_version)");
  });

  it("check the status against exactly the 13 states of the state machine", async () => {
    const { rows } = await db.pool.query<{ def: string }>(
      `SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c
        WHERE c.conrelid = 'upload_pipeline.upload_jobs'::regclass AND c.contype = 'c' AND pg_get_constraintdef(c.oid) LIKE '%status%'`,
    );
    const listed = [...rows[0]!.def.matchAll(/'(\w+)'::text/g)].map((m) => m[1]).sort();
    expect(listed).toEqual([...ALL_STATES].sort());
    expect(listed).toHaveLength(13);
  });

  it("create the claim index on fair tag and next_attempt_at over non-terminal jobs", async () => {
    const { rows } = await db.pool.query<{ indexdef: string }>(
      "SELECT indexdef FROM pg_indexes WHERE schemaname = 'upload_pipeline' AND indexname = 'upload_jobs_claim_idx'",
    );
    expect(rows[0]?.indexdef).toMatch(/\(fair_tag, next_attempt_at\)/);
    expect(rows[0]?.indexdef).toMatch(/WHERE/);
  });
});

describe("npm run migrate", () => {
  it("creates the schema in an empty database named by DATABASE_URL, and a second run changes nothing", async () => {
    const name = `migrate_cli_${Date.now()}`;
    const admin = new pg.Client(inject("pgServerUrl"));
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    const url = withDatabase(inject("pgServerUrl"), name);
    const run = () => spawnSync(process.execPath, ["src/db/migrate.ts"], { env: { ...process.env, DATABASE_URL: url }, encoding: "utf8", timeout: 30_000 });
    const first = run();
    expect(first.status, first.stderr).toBe(0);
    expect(first.stdout).toContain("applied 0001_schema.sql");
    const second = run();
    expect(second.status).toBe(0);
    expect(second.stdout).toContain("nothing to apply");
    const check = new pg.Client(url);
    await check.connect();
    const { rows } = await check.query("SELECT count(*)::int AS n FROM upload_pipeline.migrations");
    expect(rows[0].n).toBe((await loadMigrations()).length);
    await check.end();
    await admin.query(`DROP DATABASE ${name} WITH (FORCE)`);
    await admin.end();
  });

  it("without DATABASE_URL says how to set it and exits 2", async () => {
    const env = { ...process.env };
    delete env.DATABASE_URL;
    const result = spawnSync(process.execPath, ["src/db/migrate.ts"], { env, encoding: "utf8", timeout: 30_000 });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("DATABASE_URL is not set");
  });
});
