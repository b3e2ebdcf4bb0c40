/**
 * Applies `migrations/NNNN_name.sql` in order, each in its own transaction, recording each in
 * `upload_pipeline.migrations`. Safe to run twice and from several processes at once (an
 * advisory lock serialises them). `npm run migrate` runs it against DATABASE_URL.
 */
import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import pg from "pg";

const MIGRATIONS_DIR = fileURLToPath(new URL("./migrations/", import.meta.url));
const MIGRATION_LOCK = 0x75706970; // "upip"

/** Creates the bookkeeping table; run before any migration (also in each Supabase CLI file). */
export const MIGRATIONS_TABLE_SQL = `CREATE SCHEMA IF NOT EXISTS upload_pipeline;
CREATE TABLE IF NOT EXISTS upload_pipeline.migrations (
  id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());`;

/** Records a migration as applied (in the same transaction as its SQL). */
export const RECORD_MIGRATION_SQL = "INSERT INTO upload_pipeline.migrations (id, name) VALUES ($1, $2)";

export interface Migration {
  id: number;
  name: string;
  sql: string;
}

export async function loadMigrations(): Promise<Migration[]> {
  const files = (await readdir(MIGRATIONS_DIR)).filter((f) => /^\d{4}_[\w-]+\.sql$/.test(f)).sort();
  return Promise.all(files.map(async (name) => ({ id: Number(name.slice(0, 4)), name, sql: await readFile(MIGRATIONS_DIR + name, "utf8") })));
}

/** Apply pending migrations; returns the names applied (empty when already current). */
export async function migrate(databaseUrl: string, { log = console.log }: { log?: (line: string) => void } = {}): Promise<string[]> {
  const client = new pg.Client(databaseUrl);
  await client.connect();
  try {
    await client.query("SET client_min_messages = warning");
    await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK]);
    await client.query(MIGRATIONS_TABLE_SQL);
    const done = new Set((await client.query<{ id: number }>("SELECT id FROM upload_pipeline.migrations")).rows.map((r) => r.id));
    const applied: string[] = [];
    for (const m of await loadMigrations()) {
      if (done.has(m.id)) continue;
      await client.query("BEGIN");
      try {
        await client.query(m.sql);
        await client.query(RECORD_MIGRATION_SQL, [m.id, m.name]);
        await client.query("COMMIT");
      } catch (err) {
        await client.query("ROLLBACK");
        throw new Error(`migration ${m.name} failed: ${(err as Error).message}`, { cause: err });
      }
      applied.push(m.name);
      log(`applied ${m.name}`);
    }
    if (applied.length === 0) log("schema is current: nothing to apply");
    return applied;
  } finally {
    await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK]).catch(() => {});
    await client.end();
  }
}

/** Latest migration id shipped with this code, and the one the database has (for /healthz). */
export async function migrationStatus(pool: pg.Pool): Promise<{ expected: number; applied: number }> {
  const expected = Math.max(...(await loadMigrations()).map((m) => m.id));
  const { rows } = await pool.query<{ applied: number | null }>("SELECT max(id) AS applied FROM upload_pipeline.migrations");
  return { expected, applied: rows[0]?.applied ?? 0 };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const url = process.env.DATABASE_URL;
  if (!url) {
    console.error(
      "DATABASE_URL is not set: npm run migrate applies the schema to the PostgreSQL it names, e.g.\n  DATABASE_URL=postgres://user:pass@localhost:5432/db npm run migrate",
    );
    process.exit(2);
  }
  migrate(url).catch((err: Error) => {
    console.error(`migrate: ${err.message.replace(/\/\/[^@]*@/g, "//***@")}`);
    process.exit(1);
  });
}
