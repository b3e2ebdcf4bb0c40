/**
 * The whole pipeline in one test process: a real PostgreSQL (a database per file), the mocks'
 * msw handlers in-process (the real SDKs' requests are intercepted), the real API listening on
 * loopback for LlamaParse's webhooks, and real BaseWorkers running the real stages.
 */
import { randomUUID } from "node:crypto";
import { setupServer, type SetupServer } from "msw/node";
import type { FastifyInstance } from "fastify";
import { buildWiredApp } from "../../src/api/wiring.ts";
import { configForLocalMocks, type Config } from "../../src/config.ts";
import { documentId, jobId, sha256 } from "../../src/ids.ts";
import { createLogger } from "../../src/logger.ts";
import { createPipelineServices, type WiredServices } from "../../src/services.ts";
import { PIPELINE_STAGES } from "../../src/stages/index.ts";
import { createJob } from "../../src/state-machine/transition.ts";
import { BaseWorker, type WorkerOptions } from "../../src/worker/BaseWorker.ts";
import { createMocks, signServiceRoleKey, type FaultPlanInput, type Mocks } from "../../mocks/index.ts";
import type { ManualClock } from "../../src/resilience/clock.ts";
import type { Lane } from "../../src/scheduling/lanes.ts";
import { isTerminal, type JobStatus } from "../../src/state-machine/table.ts";
import { createTestDatabase, type TestDatabase } from "./db.ts";
import { until } from "./until.ts";

export const MOCK_ORIGIN = "http://mocks.test";

export interface PipelineEnv {
  db: TestDatabase;
  mocks: Mocks;
  msw: SetupServer;
  api: FastifyInstance;
  config: Config;
  services: WiredServices;
  /** A worker running the real stages (not started). */
  worker(overrides?: Partial<WorkerOptions<WiredServices>>): BaseWorker<WiredServices>;
  /** Store the file in the mock storage and create its document and job, as the API's upload does. */
  upload(file: {
    content: string | Uint8Array;
    filename?: string;
    mime?: string;
    userId?: string;
    lane?: Lane;
  }): Promise<{ documentId: string; jobId: string }>;
  close(): Promise<void>;
}

export interface PipelineEnvOptions {
  seed?: number;
  faults?: FaultPlanInput;
  env?: Record<string, string>;
  /** The mocks' clock (rate windows, outage windows, webhook timestamps); default `Date.now`. */
  mocksNow?: () => number;
  /** Run on this database instead of a clone of the template (e.g. PGlite with pgvector). */
  db?: TestDatabase;
}

export async function startPipelineEnv(options: PipelineEnvOptions = {}): Promise<PipelineEnv> {
  const db = options.db ?? (await createTestDatabase());
  const mocks = createMocks({
    seed: options.seed ?? 1,
    faults: options.faults ?? {},
    webhook: { retryDelaysMs: [50, 100], timeoutMs: 5_000 },
    ...(options.mocksNow ? { now: options.mocksNow } : {}),
  });
  const msw = setupServer(...mocks.handlers);
  msw.listen({ onUnhandledFrame: "bypass" });
  const log = createLogger({ level: "silent" });

  const base = {
    OPENAI_API_KEY: mocks.keys.openai,
    LLAMA_CLOUD_API_KEY: mocks.keys.llamaCloud,
    SUPABASE_SERVICE_ROLE_KEY: await signServiceRoleKey(mocks.keys.jwtSecret),
    SUPABASE_JWT_SECRET: mocks.keys.jwtSecret,
    DATABASE_URL: db.url,
  };
  const apiConfig = configForLocalMocks(MOCK_ORIGIN, base);
  const api = await buildWiredApp({ pool: db.pool, config: apiConfig, log });
  const address = await api.listen({ port: 0, host: "127.0.0.1" });
  const config = configForLocalMocks(MOCK_ORIGIN, {
    ...base,
    WEBHOOK_BASE_URL: address,
    WEBHOOK_DEADLINE_SECONDS: "2",
    CHUNK_MAX_TOKENS: "128",
    CHUNK_OVERLAP_TOKENS: "16",
    EMBED_BATCH_SIZE: "16",
    ...options.env,
  });
  const services = createTestServices(config);
  const workers: BaseWorker<WiredServices>[] = [];

  return {
    db,
    mocks,
    msw,
    api,
    config,
    services,
    worker(overrides = {}) {
      const w = new BaseWorker<WiredServices>({
        pool: db.pool,
        databaseUrl: db.url,
        stages: PIPELINE_STAGES,
        services,
        log,
        concurrency: 2,
        leaseSeconds: 30,
        retryBaseMs: 20,
        retryMaxMs: 200,
        pollIntervalMs: 100,
        ...overrides,
      });
      workers.push(w);
      return w;
    },
    async upload({ content, filename = "doc.md", mime = "text/markdown", userId = randomUUID(), lane }) {
      const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content;
      const fileSha = sha256(bytes);
      const docId = documentId(userId, fileSha);
      const rawPath = `${userId}/raw/${docId}/${filename}`;
      await services.storage.upload(rawPath, bytes, mime, { upsert: true });
      await db.pool.query(
        `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
        [docId, userId, filename, mime, bytes.byteLength, fileSha, rawPath],
      );
      const id = jobId(docId);
      await createJob(db.pool, { jobId: id, documentId: docId, correlationId: randomUUID(), maxAttempts: config.MAX_ATTEMPTS, lane });
      return { documentId: docId, jobId: id };
    },
    async close() {
      await Promise.all(workers.map((w) => w.stop()));
      await api.close();
      await mocks.close();
      msw.close();
      await db.drop();
    },
  };
}

/**
 * The production services for an in-process test. In-process tests crash workers
 * (SimulatedCrash) with no liveness reaper, so every crash leaves an expired lease; waiting out a
 * frozen holder's LlamaParse call after each would only stall them on the simulated clock. That
 * wait is proven by the frozen-worker scenario (real processes, SIGSTOP past the lease).
 */
export function createTestServices(config: Config): WiredServices {
  const services = createPipelineServices(config);
  services.settings.takeoverWaitMs = 0;
  return services;
}

/** Wait until every listed job is terminal (or throw, listing the stuck ones). */
export async function waitForTerminal(env: PipelineEnv, jobIds: string[], timeoutMs = 30_000): Promise<Map<string, string>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows } = await env.db.pool.query<{ job_id: string; status: string }>(
      "SELECT job_id, status FROM upload_pipeline.upload_jobs WHERE job_id = ANY($1)",
      [jobIds],
    );
    const states = new Map(rows.map((r) => [r.job_id, r.status]));
    const stuck = rows.filter((r) => !["complete", "failed_parse", "failed_chunking", "failed_embedding"].includes(r.status));
    if (stuck.length === 0 && rows.length === jobIds.length) return states;
    if (Date.now() > deadline) throw new Error(`jobs not terminal: ${stuck.map((r) => `${r.job_id}=${r.status}`).join(", ")}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** chunk ids, chunk_sha and vector_sha of a document in chunk order, and how many vectors each chunk has. */
export async function fingerprint(env: { db: { pool: Pick<TestDatabase["pool"], "query"> } }, docId: string) {
  const { rows } = await env.db.pool.query<{ chunk_id: string; chunk_sha: string; vector_sha: string | null; n: number }>(
    `SELECT c.chunk_id, c.chunk_sha, v.vector_sha,
            (SELECT count(*)::int FROM upload_pipeline.document_vector_buffer x WHERE x.chunk_id = c.chunk_id) AS n
       FROM upload_pipeline.document_chunk_buffer c
       LEFT JOIN upload_pipeline.document_vector_buffer v USING (chunk_id)
      WHERE c.document_id = $1 ORDER BY c.chunk_ord`,
    [docId],
  );
  return rows;
}

/** For `drive`: webhooks dropped (parse intake runs in the worker, the reconciler) and LlamaParse finishing at once. */
export const STEPPED_FAULTS: FaultPlanInput = {
  webhooks: { drop: { rate: 1 } },
  llamaparse: { schedule: { pending: { dist: "fixed", ms: 0 }, running: { dist: "fixed", ms: 0 }, msPerPage: 0 } },
};

/**
 * Step workers with `runOnce` on a simulated clock until the job is terminal (or `stopWhen` holds
 * for its row). When nothing is claimable, move the clock to whatever the job waits for: its
 * webhook deadline, a backoff, or a crashed worker's lease. `workers` are used in turn, each until
 * it crashes. Meant for an env started with `STEPPED_FAULTS`.
 */
export async function drive(
  env: PipelineEnv,
  jobId: string,
  clock: ManualClock,
  workers: Array<{ runOnce(): Promise<unknown>; crashed?: () => boolean }>,
  stopWhen: (job: { status: JobStatus }) => boolean = (job) => isTerminal(job.status),
): Promise<JobStatus> {
  const parsesFinished = () => Object.values(env.mocks.stats().llamaparse.jobsFinished).reduce((a, b) => a + b, 0);
  let w = 0;
  for (let step = 0; step < 200; step++) {
    const { rows } = await env.db.pool.query<{ status: JobStatus; lease_expires_at: Date | null; next_attempt_at: Date }>(
      "SELECT status, lease_expires_at, next_attempt_at FROM upload_pipeline.upload_jobs WHERE job_id = $1",
      [jobId],
    );
    const row = rows[0]!;
    if (stopWhen(row) || isTerminal(row.status)) return row.status;
    // The reconciler would snooze while LlamaParse still runs; it finishes in a few ms here.
    if (row.status === "parse_queued") await until("LlamaParse to finish", () => parsesFinished() >= env.mocks.stats().llamaparse.jobsCreated);
    const worker = workers[w]!;
    const claimed = await worker.runOnce();
    if (worker.crashed?.() && w < workers.length - 1) w += 1;
    if (claimed) continue;
    const due = Math.max(row.next_attempt_at.getTime(), row.lease_expires_at?.getTime() ?? 0);
    await clock.advance(Math.max(1, due - clock.now() + 1));
  }
  throw new Error(`job ${jobId} did not finish in 200 steps`);
}
