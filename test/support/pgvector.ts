/**
 * A real pgvector without Docker: PGlite (PostgreSQL compiled to WebAssembly) with its bundled
 * `vector` extension, served over the PostgreSQL wire protocol, so `pg`, the migrations, the API
 * and the worker talk to it exactly as they talk to Supabase.
 *
 * PGlite is one backend. pglite-socket's server multiplexes connections message by message,
 * which interleaves two clients' Parse/Bind/Execute and breaks the unnamed statement ("bind
 * message supplies 1 parameters, but prepared statement requires 4"). This server forwards a
 * client's messages up to each Sync (or simple Query) as one unit, and while that client has a
 * transaction open, nobody else's unit runs: concurrency is real but serialised.
 */
import { createServer, type Socket } from "node:net";
import { PGlite } from "@electric-sql/pglite";
import { vector } from "@electric-sql/pglite-pgvector";
import pg from "pg";
import { usePreparedStatements } from "../../src/db/statements.ts";
import { migrate } from "../../src/db/migrate.ts";
import type { TestDatabase } from "./db.ts";

const PROTOCOL_3 = 196608;
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;

/** Who may run statements on the one backend: whoever holds an open transaction, else anyone. */
class SessionLock {
  private owner: object | null = null;
  private waiters: (() => void)[] = [];
  async acquire(who: object): Promise<void> {
    while (this.owner && this.owner !== who) await new Promise<void>((resolve) => this.waiters.push(resolve));
    this.owner = who;
  }
  release(who: object, inTransaction: boolean): void {
    if (this.owner !== who || inTransaction) return;
    this.owner = null;
    for (const wake of this.waiters.splice(0)) wake();
  }
}

function serve(lite: PGlite, socket: Socket, lock: SessionLock, isClosed: () => boolean): void {
  let buffer = Buffer.alloc(0);
  let started = false;
  let unit: Buffer[] = [];
  let chain = Promise.resolve();
  const run = (messages: Buffer[]) => {
    chain = chain
      .then(async () => {
        await lock.acquire(socket);
        try {
          await lite.runExclusive(async () => {
            for (const message of messages) {
              await lite.execProtocolRawStream(new Uint8Array(message), { onRawData: (data) => void (socket.writable && socket.write(data)) });
            }
          });
        } finally {
          lock.release(socket, lite.isInTransaction());
        }
      })
      .catch(() => void socket.destroy());
  };
  socket.on("data", (data) => {
    buffer = Buffer.concat([buffer, data]);
    for (;;) {
      if (!started) {
        if (buffer.length < 8) return;
        const length = buffer.readInt32BE(0);
        if (buffer.length < length) return;
        const code = buffer.readInt32BE(4);
        const message = buffer.subarray(0, length);
        buffer = buffer.subarray(length);
        if (code === SSL_REQUEST || code === GSSENC_REQUEST) socket.write("N");
        else if (code === CANCEL_REQUEST) socket.end();
        else if (code === PROTOCOL_3) {
          started = true;
          run([message]);
        }
        continue;
      }
      if (buffer.length < 5) return;
      const length = 1 + buffer.readInt32BE(1);
      if (buffer.length < length) return;
      const type = String.fromCharCode(buffer[0]!);
      const message = buffer.subarray(0, length);
      buffer = buffer.subarray(length);
      if (type === "X") {
        socket.end();
        return;
      }
      unit.push(message);
      if (type === "S" || type === "Q") {
        run(unit);
        unit = [];
      }
    }
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    // A client gone mid-transaction must not hold the backend: roll it back.
    chain = chain
      .then(async () => {
        if (isClosed()) return;
        await lock.acquire(socket);
        try {
          if (lite.isInTransaction()) await lite.exec("ROLLBACK");
        } finally {
          lock.release(socket, false);
        }
      })
      .catch(() => {});
  });
}

export async function startPgvectorDatabase(): Promise<TestDatabase> {
  const lite = await PGlite.create({ extensions: { vector } });
  const lock = new SessionLock();
  const sockets = new Set<Socket>();
  let closed = false;
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    serve(lite, socket, lock, () => closed);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  const url = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  await migrate(url, { log: () => {} });
  // Every client here shares PGlite's one session, as behind a transaction pooler: a named
  // statement prepared by one pooled connection "already exists" for the next.
  usePreparedStatements("off", url);
  const pool = new pg.Pool({ connectionString: url, max: 8 });
  pool.on("error", () => {});
  return {
    url,
    pool,
    async drop() {
      await pool.end();
      closed = true;
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await lite.close();
    },
  };
}
