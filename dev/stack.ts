/**
 * `npm run stack`: the whole product on this machine, the local counterpart of `supabase start`.
 * One embedded PostgreSQL (or DATABASE_URL when set), the three mocks over HTTP, the API and N
 * worker processes, all with one shared environment; prints the URLs, a user token and the curl
 * for a first upload, and stops everything on Ctrl-C.
 *
 *   npm run stack                          # 2 workers, API on 8080, mocks on 4010
 *   npm run stack -- --workers 4 --api-port 3000 --mocks-port 0
 *
 * `npm run db` starts only the shared PostgreSQL and prints its DATABASE_URL.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { SignJWT } from "jose";
import { startMockServer } from "../mocks/server.ts";
import { startSharedDatabase } from "./db.ts";
import { WORKER_NODE_FLAGS, workerNodeEnv } from "../src/worker/nodeFlags.ts";

export const STACK_USAGE = "Usage: npm run stack -- [--workers 2] [--api-port 8080] [--mocks-port 4010]";
/** The Supabase CLI's local JWT secret: the same one `supabase start` uses. */
const LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

function port(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65_535) throw new Error(`--${flag} takes a port from 0 to 65535 (got '${value}')`);
  return n;
}

function parse(argv: string[]) {
  const { values } = parseArgs({ args: argv, options: { workers: { type: "string" }, "api-port": { type: "string" }, "mocks-port": { type: "string" } } });
  const workers = values.workers === undefined ? 2 : Number(values.workers);
  if (!Number.isInteger(workers) || workers < 1 || workers > 32) throw new Error(`--workers takes a whole number from 1 to 32 (got '${values.workers}')`);
  return { workers, apiPort: port("api-port", values["api-port"], 8080), mocksPort: port("mocks-port", values["mocks-port"], 4010) };
}

/** Start a child with its output prefixed by its name. */
function child(name: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  const proc = spawn(process.execPath, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  for (const stream of [proc.stdout!, proc.stderr!]) {
    createInterface({ input: stream }).on("line", (line) => process.stdout.write(`[${name}] ${line}\n`));
  }
  return proc;
}

async function waitForHealthy(url: string, api: ChildProcess, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (api.exitCode !== null) throw new Error(`the API exited (code ${api.exitCode}) before it was healthy; its output is above`);
    const ok = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`the API did not answer ${url}/healthz within ${timeoutMs / 1000} s`);
}

async function main(): Promise<void> {
  let args;
  try {
    args = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`stack: ${(err as Error).message}\n${STACK_USAGE}\n`);
    process.exit(2);
  }
  const db = await startSharedDatabase();
  const jwtSecret = process.env.SUPABASE_JWT_SECRET || LOCAL_JWT_SECRET;
  const mocks = await startMockServer({ port: args.mocksPort, seed: 1, jwtSecret });
  // The API's port must be known before it starts (LlamaParse's webhook URL names it).
  const apiPort = args.apiPort === 0 ? (await import("../src/db/provision.ts").then((m) => m.freePort())) : args.apiPort;
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...mocks.env,
    DATABASE_URL: db.url,
    SUPABASE_JWT_SECRET: jwtSecret,
    WEBHOOK_BASE_URL: apiUrl,
    PORT: String(apiPort),
    HOST: "127.0.0.1",
  };
  const procs: ChildProcess[] = [child("api", ["src/api/main.ts"], env)];
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stdout.write("stack: stopping the workers, the API, the mocks and the database…\n");
    await Promise.all(
      procs.map((p) => (p.exitCode !== null ? undefined : new Promise((resolve) => p.once("exit", resolve).kill("SIGTERM")))),
    );
    await mocks.close();
    await db.stop();
    process.stdout.write("stack: stopped\n");
    process.exit(code);
  };
  process.on("SIGINT", () => void stop(0));
  process.on("SIGTERM", () => void stop(0));
  try {
    await waitForHealthy(apiUrl, procs[0]!);
  } catch (err) {
    process.stderr.write(`stack: ${(err as Error).message}\n`);
    await stop(1);
  }
  for (let i = 1; i <= args.workers; i++) procs.push(child(`worker ${i}`, [...WORKER_NODE_FLAGS, "src/worker/main.ts"], workerNodeEnv({ ...env, WORKER_ID: `stack-worker-${i}` })));

  const userId = "00000000-0000-4000-8000-000000000001";
  const token = await new SignJWT({ role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(userId)
    .setIssuedAt()
    .setExpirationTime("24h")
    .sign(new TextEncoder().encode(jwtSecret));
  process.stdout.write(
    [
      "",
      `stack: ready (${args.workers} worker${args.workers > 1 ? "s" : ""}; Ctrl-C stops everything)`,
      `  API            ${apiUrl}   (routes: src/api/README.md)`,
      `  mocks          ${mocks.baseUrl}   (admin: ${mocks.urls.admin}/stats)`,
      `  DATABASE_URL=${db.url}`,
      `  TOKEN=${token}   (user ${userId}, valid 24 h)`,
      "",
      "  first upload:",
      `    curl -sS -X POST ${apiUrl}/upload -H "Authorization: Bearer ${token}" -F "file=@README.md;type=text/markdown"`,
      `    curl -sS ${apiUrl}/jobs/<document_id from the answer> -H "Authorization: Bearer ${token}"`,
      "",
    ].join("\n") + "\n",
  );
}

await main();
