import { createServer, type Server } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPool } from "../../src/db/pool.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

const limits = {
  PG_CONNECT_TIMEOUT_MS: 300,
  PG_STATEMENT_TIMEOUT_MS: 300,
  PG_IDLE_IN_TRANSACTION_TIMEOUT_MS: 300,
  DATABASE_PREPARED_STATEMENTS: "auto" as const,
};

describe("nothing hangs forever: the database pool", () => {
  it("a statement that runs past PG_STATEMENT_TIMEOUT_MS is cancelled by the server", async () => {
    const pool = createPool(db.url, 2, limits);
    try {
      expect((await pool.query("SHOW statement_timeout")).rows[0].statement_timeout).toBe("300ms");
      await expect(pool.query("SELECT pg_sleep(5)")).rejects.toMatchObject({ code: "57014" }); // query_canceled
    } finally {
      await pool.end();
    }
  });

  it("a transaction left idle past PG_IDLE_IN_TRANSACTION_TIMEOUT_MS is ended by the server", async () => {
    const pool = createPool(db.url, 2, limits);
    pool.on("error", () => {}); // the server closes the idle connection
    const client = await pool.connect();
    client.on("error", () => {});
    try {
      await client.query("BEGIN");
      await new Promise((r) => setTimeout(r, 800));
      await expect(client.query("SELECT 1")).rejects.toThrow();
    } finally {
      client.release(true);
      await pool.end();
    }
  });

  it("connecting to a server that never answers gives up after PG_CONNECT_TIMEOUT_MS", async () => {
    const silent: Server = createServer(() => {}); // accepts, never speaks
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const port = (silent.address() as { port: number }).port;
    const pool = createPool(`postgres://u:p@127.0.0.1:${port}/db`, 1, limits);
    try {
      const started = Date.now();
      await expect(pool.query("SELECT 1")).rejects.toThrow(/timeout/i);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await pool.end();
      silent.close();
    }
  });
});
