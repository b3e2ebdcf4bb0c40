/**
 * Named prepared statements for the queue's hot statements (the claim and the transition).
 *
 * Both are one CTE over the job, its event and its document, and PostgreSQL spent most of each
 * one planning it. Measured on one connection stepping 500 jobs through the nine transitions
 * (2 cores at load ~17): unnamed, a claim cost 1.4 ms and a transition 1.0 ms of Postgres CPU;
 * named, 0.5 ms and 0.33 ms. `npm run bench -- --only peers` went from 0.56× to 1.15×
 * graphile-worker's no-op jobs/s with this change alone. node-postgres parses a named statement
 * once per connection and then only binds and executes it.
 *
 * Supavisor's and PgBouncer's transaction mode cannot carry a named statement from one
 * transaction to the next (the next may run on another server connection), so
 * `DATABASE_PREPARED_STATEMENTS` turns them off: `auto` (the default) turns them off for a
 * `DATABASE_URL` on port 6543, the transaction pooler's port.
 */
import type pg from "pg";

export type PreparedStatementsSetting = "auto" | "on" | "off";

let prepare = true;

/** Whether the process's statements are prepared; set once at start-up from the configuration. */
export function usePreparedStatements(setting: PreparedStatementsSetting, databaseUrl: string): boolean {
  prepare = setting === "on" || (setting === "auto" && new URL(databaseUrl).port !== "6543");
  return prepare;
}

/**
 * A statement to run by name: `run(values)` gives node-postgres a named query (prepared on each
 * connection's first use), or the plain text when prepared statements are off. The name must be
 * unique per text across the process.
 */
export function namedStatement(name: string, text: string): (values: unknown[]) => pg.QueryConfig {
  return (values) => (prepare ? { name, text, values } : { text, values });
}
