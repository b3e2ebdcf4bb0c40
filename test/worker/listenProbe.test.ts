/**
 * DATABASE_LISTEN_URL: the worker checks at start-up that LISTEN delivers notifications and says
 * when it falls back to polling. Supavisor's transaction mode accepts LISTEN and delivers nothing;
 * a proxy that drops every NotificationResponse ('A') stands in for it here.
 */
import { spawn } from "node:child_process";
import { createServer, connect, type Server } from "node:net";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../src/db/provision.ts";
import { createLogger } from "../../src/logger.ts";
import { probeListen, reportWakeUp } from "../../src/worker/listenProbe.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";

let db: TestDatabase;
let proxy: Server;
let proxyUrl: string;

/** Forwards both ways, but removes NotificationResponse messages from the server's stream. */
function notificationDroppingProxy(target: URL): Server {
  return createServer((client) => {
    const server = connect(Number(target.port), target.hostname);
    client.pipe(server);
    let buffer = Buffer.alloc(0);
    server.on("data", (data) => {
      buffer = Buffer.concat([buffer, data]);
      while (buffer.length >= 5 && buffer.length >= 1 + buffer.readInt32BE(1)) {
        const length = 1 + buffer.readInt32BE(1);
        if (buffer[0] !== "A".charCodeAt(0)) client.write(buffer.subarray(0, length));
        buffer = buffer.subarray(length);
      }
    });
    const close = () => {
      client.destroy();
      server.destroy();
    };
    client.on("error", close).on("close", close);
    server.on("error", close).on("close", close);
  });
}

beforeAll(async () => {
  db = await createTestDatabase();
  const target = new URL(db.url);
  proxy = notificationDroppingProxy(target);
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const url = new URL(db.url);
  url.port = String((proxy.address() as { port: number }).port);
  proxyUrl = url.toString();
});
afterAll(async () => {
  proxy.close();
  await db.drop();
});

function captureLog() {
  const lines: Array<{ level: number; msg: string; reason?: string }> = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()));
      done();
    },
  });
  const log = createLogger({ level: "info", destination });
  return { log, lines };
}

describe("the LISTEN probe", () => {
  it("finds NOTIFY working on a direct connection", async () => {
    expect(await probeListen(db.url, db.pool)).toEqual({ mode: "notify" });
  });

  it("falls back to polling when LISTEN is accepted but nothing arrives (transaction pooling)", async () => {
    expect(await probeListen(proxyUrl, db.pool, 1_000)).toEqual({
      mode: "polling",
      reason: "LISTEN was accepted but no notification arrived within 1000 ms",
    });
  });

  it("falls back to polling when the LISTEN URL does not answer, and the log names the variable and the fix", async () => {
    const closed = `postgres://postgres:hunter2-secret@127.0.0.1:${await freePort()}/postgres`;
    const { log, lines } = captureLog();
    const wakeUp = await reportWakeUp(closed, db.pool, log, { listenUrlSet: true, pollIntervalMs: 2000 });
    expect(wakeUp.mode).toBe("polling");
    expect(lines).toHaveLength(1);
    expect(lines[0]!.msg).toContain("LISTEN does not work on DATABASE_LISTEN_URL");
    expect(lines[0]!.msg).toContain("falling back to polling every 2000 ms");
    expect(lines[0]!.msg).toContain("set DATABASE_LISTEN_URL to the direct connection");
    expect(JSON.stringify(lines)).not.toContain("hunter2-secret");
  });
});

describe("npm run worker", () => {
  it("takes DATABASE_LISTEN_URL for LISTEN and says at start-up that it falls back to polling", async () => {
    const env = {
      ...process.env,
      OPENAI_API_KEY: "sk-test",
      LLAMA_CLOUD_API_KEY: "llx-test",
      SUPABASE_URL: "http://127.0.0.1:9",
      SUPABASE_SERVICE_ROLE_KEY: "service-role-test",
      WEBHOOK_BASE_URL: "http://127.0.0.1:9",
      DATABASE_URL: db.url,
      DATABASE_LISTEN_URL: proxyUrl,
      LOG_LEVEL: "info",
    };
    const child = spawn(process.execPath, ["src/worker/main.ts"], { env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const line = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no fallback line within 60 s; output:\n${out}`)), 60_000);
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        const found = out.split("\n").find((l) => l.includes("falling back to polling"));
        if (found) {
          clearTimeout(timer);
          resolve(found);
        }
      });
    });
    child.kill("SIGTERM");
    await new Promise((resolve) => child.on("exit", resolve));
    expect(JSON.parse(line)).toMatchObject({ level: 40, listen_url: "DATABASE_LISTEN_URL" });
    expect(line).toContain("no notification arrived");
  }, 90_000);
});
