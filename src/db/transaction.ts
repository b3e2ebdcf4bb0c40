/**
 * One transaction on a pooled client. A connection that dies while checked out (a Postgres
 * restart) emits 'error' on the client, which would crash the process without a listener; the
 * statement in flight rejects anyway, so the listener only keeps the process alive, and the
 * broken client is destroyed instead of going back to the pool.
 */
import type pg from "pg";
import { PipelineError } from "../errors.ts";

export async function withTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  const ignore = () => {};
  client.on("error", ignore);
  let broken: Error | undefined;
  try {
    await client.query("BEGIN");
    const result = await fn(client);
    await client.query("COMMIT");
    return result;
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    // Our own errors (a lost lease, a conflict) leave the connection healthy.
    if (!(err instanceof PipelineError)) broken = err as Error;
    throw err;
  } finally {
    client.off("error", ignore);
    client.release(broken);
  }
}
