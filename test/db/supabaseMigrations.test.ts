/**
 * `npm run supabase:migrations` writes the same SQL `npm run migrate` runs: applied file by file
 * the way the Supabase CLI applies them (each file one transaction), it yields the same catalog,
 * and `npm run migrate` afterwards finds nothing to do.
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { loadMigrations, migrate } from "../../src/db/migrate.ts";
import { withDatabase } from "../../src/db/provision.ts";

const runExporter = (...args: string[]) => spawnSync(process.execPath, ["src/db/supabaseMigrations.ts", ...args], { encoding: "utf8", timeout: 60_000 });

let out: string;
const databases: string[] = [];

async function emptyDatabase(): Promise<string> {
  const name = `sbm_${Math.random().toString(36).slice(2, 10)}`;
  const admin = new pg.Client(inject("pgServerUrl"));
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  databases.push(name);
  return withDatabase(inject("pgServerUrl"), name);
}

/** Everything the schema defines, as comparable text (not the row in migrations' applied_at). */
async function catalog(url: string) {
  const client = new pg.Client(url);
  await client.connect();
  const list = async (sql: string) => (await client.query<{ x: string }>(sql)).rows.map((r) => r.x);
  try {
    return {
      columns: await list(`SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '') || ' ' || is_nullable AS x
                             FROM information_schema.columns WHERE table_schema = 'upload_pipeline' ORDER BY 1`),
      constraints: await list(`SELECT conrelid::regclass || ' ' || pg_get_constraintdef(oid) AS x FROM pg_constraint
                                WHERE connamespace = 'upload_pipeline'::regnamespace ORDER BY 1`),
      indexes: await list("SELECT indexdef AS x FROM pg_indexes WHERE schemaname = 'upload_pipeline' ORDER BY 1"),
      policies: await list(
        "SELECT tablename || ' ' || policyname || ' ' || cmd || ' ' || qual AS x FROM pg_policies WHERE schemaname = 'upload_pipeline' ORDER BY 1",
      ),
      functions: await list(
        "SELECT p.oid::regprocedure || ' ' || md5(p.prosrc) AS x FROM pg_proc p WHERE pronamespace IN ('upload_pipeline'::regnamespace, 'auth'::regnamespace) ORDER BY 1",
      ),
      triggers: await list("SELECT pg_get_triggerdef(oid) AS x FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1"),
      rls: await list(
        "SELECT relname || ' ' || relrowsecurity AS x FROM pg_class WHERE relnamespace = 'upload_pipeline'::regnamespace AND relkind = 'r' ORDER BY 1",
      ),
      grants: await list(`SELECT table_name || ' ' || grantee || ' ' || privilege_type AS x FROM information_schema.role_table_grants
                           WHERE table_schema = 'upload_pipeline' ORDER BY 1`),
      migrations: await list("SELECT id || ' ' || name AS x FROM upload_pipeline.migrations ORDER BY id"),
    };
  } finally {
    await client.end();
  }
}

beforeAll(async () => {
  out = await mkdtemp(join(tmpdir(), "supabase-migrations-"));
  const result = runExporter("--out", out);
  expect(result.stderr).toBe("");
  expect(result.status).toBe(0);
});
afterAll(async () => {
  await rm(out, { recursive: true, force: true });
  const admin = new pg.Client(inject("pgServerUrl"));
  await admin.connect();
  for (const name of databases) await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
});

describe("npm run supabase:migrations", () => {
  it("writes one timestamped file per migration, in the same order, each holding that migration's SQL verbatim", async () => {
    const files = (await readdir(out)).sort();
    const migrations = await loadMigrations();
    expect(files).toHaveLength(migrations.length);
    for (const [i, m] of migrations.entries()) {
      expect(files[i]).toMatch(/^\d{14}_upload_pipeline_[\w-]+\.sql$/);
      expect(files[i]!.endsWith(m.name.slice(5))).toBe(true);
      expect(await readFile(join(out, files[i]!), "utf8")).toContain(m.sql.trimEnd());
    }
  });

  it("applied as the Supabase CLI applies them, gives the schema npm run migrate gives, and migrate then applies nothing", async () => {
    const viaCli = await emptyDatabase();
    const client = new pg.Client(viaCli);
    await client.connect();
    for (const file of (await readdir(out)).sort()) {
      await client.query("BEGIN");
      await client.query(await readFile(join(out, file), "utf8"));
      await client.query("COMMIT");
    }
    await client.end();
    const viaMigrate = await emptyDatabase();
    await migrate(viaMigrate, { log: () => {} });

    const [a, b] = [await catalog(viaCli), await catalog(viaMigrate)];
    expect(a.columns.length).toBeGreaterThan(40);
    expect(a.policies.length).toBeGreaterThan(4);
    expect(a).toEqual(b);
    expect(await migrate(viaCli, { log: () => {} })).toEqual([]);
  });

  it("--check passes on a current folder and names the file that is not", async () => {
    expect(runExporter("--out", out, "--check").status).toBe(0);
    const [first] = (await readdir(out)).sort();
    await writeFile(join(out, first!), "-- edited by hand\n");
    const result = runExporter("--out", out, "--check");
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(first);
    expect(result.stderr).toContain("run npm run supabase:migrations");
  });

  it("refuses an unknown flag with the usage, exit 2", () => {
    const result = runExporter("--bogus");
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("Unknown option '--bogus'");
    expect(result.stderr).toContain("Usage: npm run supabase:migrations");
  });
});
