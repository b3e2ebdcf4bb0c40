/**
 * Does LISTEN actually deliver notifications on this URL? Through Supavisor's transaction mode
 * (Supabase's pooler, port 6543) `LISTEN` is accepted but the session it ran on goes back to the
 * pool, so nothing ever arrives and idle workers only find jobs by polling. At start-up the
 * worker sends itself one notification through its pool and waits for it on a LISTEN connection
 * to the URL it will listen on, and says which way it will wake up.
 */
import { randomUUID } from "node:crypto";
import pg from "pg";
import type { Logger } from "../logger.ts";

const PROBE_CHANNEL = "upload_pipeline_listen_probe";

export type WakeUp = { mode: "notify" } | { mode: "polling"; reason: string };

export async function probeListen(listenUrl: string, pool: pg.Pool, timeoutMs = 3_000): Promise<WakeUp> {
  const client = new pg.Client({ connectionString: listenUrl, connectionTimeoutMillis: timeoutMs });
  client.on("error", () => {});
  const payload = randomUUID();
  try {
    await client.connect();
    await client.query(`LISTEN ${PROBE_CHANNEL}`);
    const arrived = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      client.on("notification", (n) => {
        if (n.channel !== PROBE_CHANNEL || n.payload !== payload) return;
        clearTimeout(timer);
        resolve(true);
      });
    });
    await pool.query("SELECT pg_notify($1, $2)", [PROBE_CHANNEL, payload]);
    return (await arrived) ? { mode: "notify" } : { mode: "polling", reason: `LISTEN was accepted but no notification arrived within ${timeoutMs} ms` };
  } catch (err) {
    return { mode: "polling", reason: `could not LISTEN: ${(err as Error).message}` };
  } finally {
    await client.end().catch(() => {});
  }
}

/** Probe and log the outcome: info when NOTIFY works, a warning with the fix when it does not. */
export async function reportWakeUp(
  listenUrl: string,
  pool: pg.Pool,
  log: Logger,
  { listenUrlSet, pollIntervalMs }: { listenUrlSet: boolean; pollIntervalMs: number },
): Promise<WakeUp> {
  const variable = listenUrlSet ? "DATABASE_LISTEN_URL" : "DATABASE_URL";
  const wakeUp = await probeListen(listenUrl, pool);
  if (wakeUp.mode === "notify") {
    log.info({ listen_url: variable }, `idle slots wake on NOTIFY (LISTEN on ${variable})`);
  } else {
    log.warn(
      { listen_url: variable, reason: wakeUp.reason, poll_interval_ms: pollIntervalMs },
      `LISTEN does not work on ${variable} (${wakeUp.reason}): falling back to polling every ${pollIntervalMs} ms, and a dead worker's jobs wait for its lease to expire. ` +
        `Behind Supavisor's transaction mode (port 6543), set DATABASE_LISTEN_URL to the direct connection (port 5432) or the session pooler.`,
    );
  }
  return wakeUp;
}
