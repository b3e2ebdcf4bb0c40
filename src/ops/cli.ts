/**
 * What the operator commands (`npm run dlq`, `npm run prune`) share: a duration flag, the
 * database they act on, and one way to stop on a user mistake (the message, exit 2, no stack).
 */
import pg from "pg";

export class UsageError extends Error {}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** `90s`, `30m`, `1h`, `30d` → seconds. */
export function parseDuration(flag: string, value: string): number {
  const m = /^(\d+)([smhd])$/.exec(value.trim());
  if (!m || Number(m[1]) === 0) throw new UsageError(`${flag} takes a duration such as 90s, 30m, 1h or 30d (got '${value}')`);
  return Number(m[1]) * UNITS[m[2]!]!;
}

/** The database named by DATABASE_URL (an operator command never starts an embedded one). */
export function operatorPool(command: string, env: NodeJS.ProcessEnv = process.env): pg.Pool {
  const url = env.DATABASE_URL;
  if (!url)
    throw new UsageError(
      `DATABASE_URL is not set: ${command} acts on the database it names, e.g.\n  DATABASE_URL=postgres://user:pass@host:5432/db ${command} …`,
    );
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  pool.on("error", () => {});
  return pool;
}

/** Run a command's main; a UsageError prints its message and exits 2, anything else exits 1. */
export async function runCli(command: string, usage: string, main: () => Promise<number>): Promise<void> {
  try {
    process.exitCode = await main();
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`${command}: ${err.message}\n\n${usage}`);
      process.exitCode = 2;
    } else {
      console.error(`${command}: ${(err as Error).message.replace(/\/\/[^@\s]*@/g, "//***@")}`);
      process.exitCode = 1;
    }
  }
}
