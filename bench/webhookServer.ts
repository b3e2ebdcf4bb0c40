/**
 * The API as its own process, for the webhook benchmark: production wiring (`buildWiredApp`) on
 * loopback, so the load generator and the server do not share an event loop. Reads
 * DATABASE_URL; prints one JSON line `{"listening": url, "pid": n}` once it accepts requests;
 * SIGTERM closes it.
 *
 * Logging is off (LOG_LEVEL=silent): the figure is the handler's cost, not pino's. With the
 * default `info` every accepted delivery also writes one JSON log line.
 */
import pg from "pg";
import { buildWiredApp } from "../src/api/wiring.ts";
import { configForLocalMocks } from "../src/config.ts";
import { createLogger } from "../src/logger.ts";
import { DEFAULT_JWT_SECRET } from "../mocks/index.ts";

const databaseUrl = process.env.DATABASE_URL;
if (!databaseUrl) {
  process.stderr.write("webhookServer: DATABASE_URL is not set\n");
  process.exit(2);
}
// The webhook route talks to Postgres only; the service URLs are never called here.
// The JWT secret only verifies users' bearer tokens on other routes; the webhook needs none.
const config = configForLocalMocks("http://127.0.0.1:9", { DATABASE_URL: databaseUrl, SUPABASE_JWT_SECRET: DEFAULT_JWT_SECRET, LOG_LEVEL: "silent" });
const pool = new pg.Pool({ connectionString: databaseUrl, max: 20 }); // as src/api/main.ts
pool.on("error", () => {});
const app = await buildWiredApp({ pool, config, log: createLogger({ level: "silent" }) });
const address = await app.listen({ port: 0, host: "127.0.0.1" });
process.stdout.write(`${JSON.stringify({ listening: address, pid: process.pid })}\n`);

process.once("SIGTERM", () => {
  const force = setTimeout(() => process.exit(1), 5_000);
  force.unref();
  void app
    .close()
    .then(() => pool.end())
    .then(() => process.exit(0));
});
