/**
 * Run statements as Supabase's PostgREST does for a request: in one transaction, `SET LOCAL ROLE`
 * to the JWT's role and the verified claims in `request.jwt.claims`, so auth.uid() and the
 * row-level security policies see that user. Rolled back afterwards: callers only read.
 */
import type pg from "pg";

export type SupabaseRole = "anon" | "authenticated" | "service_role";

export async function asRole<T>(pool: pg.Pool, role: SupabaseRole, sub: string | undefined, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query(`SET LOCAL ROLE ${role}`);
    await client.query("SELECT set_config('request.jwt.claims', $1, true)", [JSON.stringify({ role, ...(sub ? { sub } : {}) })]);
    return await fn(client);
  } finally {
    await client.query("ROLLBACK").catch(() => {});
    client.release();
  }
}
