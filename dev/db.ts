/**
 * `npm run db`: one shared PostgreSQL for the pieces run by hand (`npm run api`, `npm run
 * worker`, the scenarios), migrated, with its DATABASE_URL printed; Ctrl-C stops and deletes it.
 * Without it, each of those would start a private embedded database that nothing else can see.
 */
import { migrate } from "../src/db/migrate.ts";
import { provisionDatabase, type ProvisionedDatabase } from "../src/db/provision.ts";

/** DATABASE_URL when set, else a new embedded PostgreSQL; migrated either way. */
export async function startSharedDatabase(): Promise<ProvisionedDatabase> {
  const db = await provisionDatabase({ databaseUrl: process.env.DATABASE_URL });
  await migrate(db.url, { log: () => {} });
  return db;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const db = await startSharedDatabase();
  process.stdout.write(`DATABASE_URL=${db.url}\n`);
  process.stderr.write(`db: ${db.kind} PostgreSQL ready and migrated; export the line above for npm run api / npm run worker. Ctrl-C stops it.\n`);
  const stop = () => void db.stop().then(() => process.exit(0));
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
