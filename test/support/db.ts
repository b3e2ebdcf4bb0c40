/**
 * One database per test file (or per test), cloned from the migrated template as
 * graphile-worker does, so files run in parallel without seeing each other's rows.
 *
 *   let db: TestDatabase;
 *   beforeAll(async () => { db = await createTestDatabase(); });
 *   afterAll(() => db.drop());
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { inject } from "vitest";
import { withDatabase } from "../../src/db/provision.ts";

export interface TestDatabase {
  url: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(inject("pgServerUrl"));
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `t_${randomBytes(6).toString("hex")}`;
  // CREATE DATABASE … TEMPLATE needs the template to have no other sessions; serialise the
  // clones across files with an advisory lock on the server.
  await admin(async (c) => {
    await c.query("SELECT pg_advisory_lock(727272)");
    try {
      await c.query(`CREATE DATABASE ${name} TEMPLATE ${inject("pgTemplateDb")}`);
    } finally {
      await c.query("SELECT pg_advisory_unlock(727272)");
    }
  });
  const url = withDatabase(inject("pgServerUrl"), name);
  const pool = new pg.Pool({ connectionString: url, max: 20 });
  // drop() forces the database away; an idle client still closing must not crash the file.
  pool.on("error", () => {});
  return {
    url,
    pool,
    async drop() {
      await pool.end();
      await admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}
