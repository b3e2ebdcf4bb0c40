/**
 * Webhook: requests per second and latency of `POST /webhooks/llamaparse` under autocannon,
 * signature verification included (SPEC §9).
 *
 * The API runs as its own process (`webhookServer.ts`, production wiring, logging off) on
 * loopback; autocannon runs here. One job waits in `parse_queued` with a known signing secret;
 * every request is a genuine LlamaParse delivery for it: a `parse.running` event with its own
 * `event_id`, signed (`LC-Signature: sha256=HMAC(secret, raw body)`) ahead of time, so each is
 * looked up, verified in constant time, checked for freshness and recorded in `webhook_log`
 * (one transaction) without moving the job. A second pass re-sends deliveries already recorded:
 * genuine duplicates, answered 200 without a write.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import autocannon, { type Result } from "autocannon";
import { documentId, jobId, sha256 } from "../src/ids.ts";
import { createJob } from "../src/state-machine/transition.ts";
import { signWebhook } from "../mocks/index.ts";
import { cpuWindow, createDatabase, describeCpu, figure, round, type BenchContext, type BenchResult, type CpuWindow } from "./support.ts";

const SERVER_ENTRY = new URL("./webhookServer.ts", import.meta.url).pathname;
const CONNECTIONS = 10;
/** No pass may run longer than this, whatever the request count. */
const PASS_CAP_SECONDS = 40;

interface Delivery {
  body: string;
  headers: Record<string, string>;
}

interface WebhookPass {
  label: string;
  requests: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  cpu: CpuWindow;
}

export async function runWebhookBench(ctx: BenchContext): Promise<BenchResult> {
  const started = Date.now();
  const distinct = ctx.quick ? 3_000 : 20_000;
  const duplicates = ctx.quick ? 2_000 : 10_000;
  const warmup = ctx.quick ? 300 : 1_000;
  const db = await createDatabase(ctx, "webhook", 4);
  let server: ChildProcess | undefined;
  try {
    const secret = `whsec_${randomUUID()}`;
    const parseJobId = randomUUID();
    const job = await seedParseQueuedJob(db.pool, parseJobId, secret);

    const { url, pid } = await startServer(db.url, (child) => (server = child));
    const endpoint = `${url}/webhooks/llamaparse`;
    // Signed just before use: the handler refuses a body timestamp more than 5 minutes off.
    const all = Array.from({ length: warmup + distinct }, () => signedDelivery(parseJobId, secret));

    ctx.log(`webhook: warm-up, ${warmup} deliveries`);
    await fire(endpoint, all.slice(0, warmup));
    ctx.log(`webhook: ${distinct} distinct signed deliveries, ${CONNECTIONS} connections`);
    const fresh = await measure(ctx, db.pool, pid, "distinct event_ids (verified + recorded)", endpoint, all.slice(warmup));
    ctx.log(`webhook: ${duplicates} genuine duplicates of recorded deliveries`);
    const dupes = await measure(ctx, db.pool, pid, "genuine duplicates (verified, nothing written)", endpoint, all.slice(warmup, warmup + duplicates));

    const { rows } = await db.pool.query<{ n: number; status: string }>(
      "SELECT (SELECT count(*)::int FROM upload_pipeline.webhook_log WHERE job_id = $1) AS n, (SELECT status FROM upload_pipeline.upload_jobs WHERE job_id = $1) AS status",
      [job],
    );
    const recorded = rows[0]?.n ?? 0;
    const figures = [
      figure("rps", "req/s, distinct deliveries", round(fresh.rps, 0), "req/s"),
      figure("p50_ms", "p50 latency, distinct deliveries", fresh.p50Ms, "ms"),
      figure("p99_ms", "p99 latency, distinct deliveries", fresh.p99Ms, "ms"),
      figure("non2xx", "non-2xx answers, distinct deliveries", fresh.non2xx + fresh.errors + fresh.timeouts, "answers"),
      figure("rps_duplicates", "req/s, genuine duplicates", round(dupes.rps, 0), "req/s"),
      figure("p99_ms_duplicates", "p99 latency, genuine duplicates", dupes.p99Ms, "ms"),
      figure("non2xx_duplicates", "non-2xx answers, genuine duplicates", dupes.non2xx + dupes.errors + dupes.timeouts, "answers"),
    ];
    return {
      name: "webhook",
      title: "Webhook: POST /webhooks/llamaparse under autocannon (signature verified)",
      figures,
      notes: [
        `API in its own process (production wiring, LOG_LEVEL=silent, pool of 20) on loopback; autocannon with ${CONNECTIONS} connections, no pipelining, in the benchmark process; ${warmup} deliveries of warm-up first.`,
        `Each request: parse job lookup, constant-time HMAC-SHA256 over the raw body, ±5 min timestamp check, zod, and one transaction writing webhook_log. webhook_log holds ${recorded} rows for the job afterwards (expected ${warmup + distinct}); the job is still ${rows[0]?.status}.`,
        ...[fresh, dupes].map(
          (p) =>
            `${p.label}: ${describeCpu(p.cpu, { label: "API process", cores: p.cpu.childCores ?? 0 })}; load generator ${Math.round(p.cpu.benchProcessCores * 100)} % of a core.`,
        ),
      ],
      details: { connections: CONNECTIONS, warmup, recorded, passes: [fresh, dupes] },
      durationMs: Date.now() - started,
    };
  } finally {
    if (server && server.exitCode === null && server.signalCode === null) {
      const gone = new Promise<void>((resolve) => server!.once("exit", () => resolve()));
      server.kill("SIGTERM");
      const timer = setTimeout(() => server!.kill("SIGKILL"), 10_000);
      await gone;
      clearTimeout(timer);
    }
    await db.drop();
  }
}

/** A job in `parse_queued` with a LlamaParse job id and a signing secret, as submit leaves it. */
async function seedParseQueuedJob(pool: import("pg").Pool, parseJobId: string, secret: string): Promise<string> {
  const userId = randomUUID();
  const fileSha = sha256(`webhook bench ${userId}`);
  const docId = documentId(userId, fileSha);
  await pool.query(
    `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
     VALUES ($1, $2, 'doc.md', 'text/markdown', 1024, $3, $4)`,
    [docId, userId, fileSha, `${userId}/raw/${docId}/doc.md`],
  );
  const id = jobId(docId);
  await createJob(pool, { jobId: id, documentId: docId, correlationId: randomUUID(), maxAttempts: 5 });
  // A fixture write: the state submit leaves behind (its own transition is fenced by a lease).
  await pool.query(
    "UPDATE upload_pipeline.upload_jobs SET status = 'parse_queued', parse_job_id = $2, webhook_secret = $3, next_attempt_at = now() + interval '1 hour' WHERE job_id = $1",
    [id, parseJobId, secret],
  );
  return id;
}

/** A `parse.running` delivery as LlamaParse sends it (`webhook_output_format: "json"`). */
function signedDelivery(parseJobId: string, secret: string): Delivery {
  const eventId = randomUUID();
  const body = JSON.stringify({ event_id: eventId, event_type: "parse.running", timestamp: Date.now() / 1000, data: { id: parseJobId, job_id: parseJobId } });
  return {
    body,
    headers: {
      "content-type": "application/json",
      "user-agent": "llamaindex-webhook-service/1.0",
      "x-webhook-event-id": eventId,
      "x-webhook-event-type": "parse.running",
      "lc-signature": signWebhook(secret, body),
    },
  };
}

interface Fired {
  result: Result;
  /** Answers seen, and wall seconds from the start to the last answer (autocannon's own
   * `duration` is whole seconds of its sampling ticks, too coarse for a run of a few seconds). */
  answers: number;
  non2xx: number;
  seconds: number;
}

/** Send each delivery once (cycling if autocannon asks for more), `CONNECTIONS` at a time. */
async function fire(url: string, deliveries: Delivery[]): Promise<Fired> {
  let next = 0;
  let answers = 0;
  let non2xx = 0;
  let lastAnswerAt = 0;
  const t0 = performance.now();
  const instance = autocannon({
    url,
    method: "POST",
    connections: CONNECTIONS,
    amount: deliveries.length,
    timeout: 10,
    requests: [
      {
        method: "POST",
        setupRequest: (request) => {
          const d = deliveries[next++ % deliveries.length]!;
          return { ...request, method: "POST", body: d.body, headers: { ...request.headers, ...d.headers } };
        },
        onResponse: (status) => {
          answers += 1;
          if (status < 200 || status > 299) non2xx += 1;
          lastAnswerAt = performance.now();
          // Autocannon otherwise ends on its next one-second tick; stop with the last answer.
          if (answers >= deliveries.length) instance.stop();
        },
      },
    ],
  });
  const cap = setTimeout(() => instance.stop(), PASS_CAP_SECONDS * 1000);
  try {
    const result = await instance;
    return { result, answers, non2xx, seconds: (lastAnswerAt - t0) / 1000 };
  } finally {
    clearTimeout(cap);
  }
}

async function measure(
  ctx: BenchContext,
  pool: import("pg").Pool,
  serverPid: number,
  label: string,
  url: string,
  deliveries: Delivery[],
): Promise<WebhookPass> {
  const cpu = await cpuWindow(pool, [serverPid]);
  const fired = await fire(url, deliveries);
  const window = cpu.stop();
  const r = fired.result;
  const pass: WebhookPass = {
    label,
    requests: fired.answers,
    seconds: round(fired.seconds, 3),
    rps: fired.answers / fired.seconds,
    p50Ms: r.latency.p50,
    p90Ms: r.latency.p90,
    p99Ms: r.latency.p99,
    maxMs: r.latency.max,
    non2xx: Math.max(fired.non2xx, r.non2xx),
    errors: r.errors,
    timeouts: r.timeouts,
    cpu: window,
  };
  ctx.log(`webhook: ${label}: ${Math.round(pass.rps)} req/s, p50 ${pass.p50Ms} ms, p99 ${pass.p99Ms} ms, ${pass.non2xx} non-2xx, ${pass.errors} errors`);
  return pass;
}

/** Spawn the API process and wait for its `listening` line. */
async function startServer(databaseUrl: string, onSpawn: (child: ChildProcess) => void): Promise<{ url: string; pid: number }> {
  const child = spawn(process.execPath, [SERVER_ENTRY], {
    env: { ...process.env, DATABASE_URL: databaseUrl },
    stdio: ["ignore", "pipe", "pipe"],
  });
  onSpawn(child);
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => (stderr = (stderr + c.toString("utf8")).slice(-4000)));
  const lines = createInterface({ input: child.stdout! });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the API process did not start within 60 s: ${stderr}`)), 60_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the API process exited (code ${code}) before listening: ${stderr}`));
    });
    lines.on("line", (line) => {
      try {
        const msg = JSON.parse(line) as { listening?: string; pid?: number };
        if (msg.listening) {
          clearTimeout(timer);
          resolve({ url: msg.listening, pid: msg.pid ?? child.pid! });
        }
      } catch {
        // not our line
      }
    });
  });
}
