/**
 * The connection pool of the worker and the API. Nothing waits on PostgreSQL forever: a
 * connection attempt, one statement, and a transaction left open without a statement each have
 * a limit (the last two enforced by the server, so a frozen or partitioned client's transaction
 * does not hold its row locks), and TCP keep-alive notices a peer that vanished silently.
 */
import pg from "pg";
import type { Config } from "../config.ts";
import { usePreparedStatements } from "./statements.ts";

export type PoolLimits = Pick<
  Config,
  "PG_CONNECT_TIMEOUT_MS" | "PG_STATEMENT_TIMEOUT_MS" | "PG_IDLE_IN_TRANSACTION_TIMEOUT_MS" | "DATABASE_PREPARED_STATEMENTS"
>;

/** The process's pool; also decides, from the URL and the setting, whether hot statements are prepared (statements.ts). */
export function createPool(connectionString: string, max: number, limits: PoolLimits): pg.Pool {
  usePreparedStatements(limits.DATABASE_PREPARED_STATEMENTS, connectionString);
  return new pg.Pool({
    connectionString,
    max,
    connectionTimeoutMillis: limits.PG_CONNECT_TIMEOUT_MS,
    keepAlive: true,
    statement_timeout: limits.PG_STATEMENT_TIMEOUT_MS,
    idle_in_transaction_session_timeout: limits.PG_IDLE_IN_TRANSACTION_TIMEOUT_MS,
  });
}
