/**
 * `npm run api`: configuration → database (DATABASE_URL, or an embedded PostgreSQL) → migrations
 * → the real dependencies → listen on HOST:PORT. SIGTERM/SIGINT close the server gracefully:
 * stop accepting, let in-flight requests and parse intakes finish, close the pool, stop an
 * embedded database; a second signal exits at once.
 */
import { loadConfigOrExit } from "../config.ts";
import { createPool } from "../db/pool.ts";
import { migrate } from "../db/migrate.ts";
import { provisionDatabase } from "../db/provision.ts";
import { createLogger } from "../logger.ts";
import { stopOnSignals } from "../signals.ts";
import { startTracing } from "../tracing.ts";
import { buildWiredApp } from "./wiring.ts";

async function main(): Promise<void> {
  const config = loadConfigOrExit("api");
  if (!config.SUPABASE_JWT_SECRET && !config.SUPABASE_JWKS_URL) {
    process.stderr.write(
      "api: Invalid configuration:\n  - SUPABASE_JWT_SECRET: is not set; expected the project's JWT secret (at least 32 characters), " +
        "which the API needs to verify bearer tokens (or set SUPABASE_JWKS_URL)\n",
    );
    process.exit(2);
  }
  if (!config.DATABASE_URL && config.TEST_DB !== "container" && config.ALLOW_PRIVATE_DATABASE !== "true") {
    process.stderr.write(
      "api: DATABASE_URL is not set, so the API would start its own private embedded PostgreSQL, which no worker can see " +
        "(an upload would stay 'uploaded' forever). Run `npm run stack` for the whole local stack, or `npm run db` and export " +
        "the DATABASE_URL it prints for the API and the workers; set ALLOW_PRIVATE_DATABASE=true if a private database is what you want.\n",
    );
    process.exit(2);
  }
  const log = createLogger({ level: config.LOG_LEVEL, name: "api" });

  const db = await provisionDatabase({ databaseUrl: config.DATABASE_URL, testDb: config.TEST_DB });
  log.info({ kind: db.kind }, "database ready");
  await migrate(db.url, { log: (line) => log.info(line) });
  const pool = createPool(db.url, 20, config);
  // A dropped idle connection (Postgres restart, or the embedded server stopping first on a
  // signal) must not kill the process; the next query reconnects.
  pool.on("error", (err) => log.warn({ err: err.message }, "idle database connection lost"));

  // Before the app: its Storage and LlamaParse clients are built with traced fetches.
  const tracing = startTracing({ endpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT, serviceName: "upload-pipeline-api" });
  const app = await buildWiredApp({ pool, config, log, defaultMetrics: true });
  stopOnSignals(
    async () => {
      await app.close(); // stops accepting; waits for in-flight requests and parse intakes
      await pool.end();
      await tracing?.shutdown();
      await db.stop();
    },
    log,
    config.SHUTDOWN_TIMEOUT_MS,
  );

  const address = await app.listen({ port: config.PORT, host: config.HOST });
  log.info({ address, database: db.kind }, "api listening");
}

main().catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  // A connection string may carry a password.
  console.error(`api: ${message.replace(/\/\/[^@\s]*@/g, "//***@")}`);
  process.exit(1);
});
