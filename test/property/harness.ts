/**
 * What the pipeline properties share: one pipeline environment per property (expensive: a
 * database, the mocks, the API), runs isolated from each other by fresh user ids, a reference
 * (crash-free) run per content, a stepping worker on a simulated clock, webhook deliveries built
 * and signed by hand, a drain, and the invariant checks.
 *
 * Three deliberate departures from `startPipelineEnv`, all for reproducible histories:
 * - the mocks read the run's simulated clock (see `startPropertyEnv`);
 * - the LlamaParse mock never sends webhooks itself (`drop: 1`) and finishes jobs at once; the
 *   histories deliver (or withhold) every webhook explicitly;
 * - deliveries go to an API built here with the same `buildApp` and the same parse intake, except
 *   that the intake the handler hands off is tracked and awaited, so a history does not race
 *   with a background fetch-and-store it cannot see.
 */
import { randomUUID } from "node:crypto";
import type { FastifyInstance } from "fastify";
import fc from "fast-check";
import type pg from "pg";
import { setupServer } from "msw/node";
import { buildApp } from "../../src/api/app.ts";
import { signWebhook } from "../../src/api/routes/webhook.ts";
import { configForLocalMocks, type Config } from "../../src/config.ts";
import { documentId, jobId, sha256 } from "../../src/ids.ts";
import { createLogger } from "../../src/logger.ts";
import type { WiredServices } from "../../src/services.ts";
import { PIPELINE_STAGES } from "../../src/stages/index.ts";
import { webhookIntake } from "../../src/stages/parseIntake.ts";
import { EDGES, isTerminal, type JobStatus } from "../../src/state-machine/table.ts";
import { createJob } from "../../src/state-machine/transition.ts";
import { BaseWorker, type WorkerOptions } from "../../src/worker/BaseWorker.ts";
import { FaultInjector, SimulatedCrash, type FaultPoints, type FaultRule } from "../../src/worker/faultPoints.ts";
import type { ClaimedJob } from "../../src/worker/queries.ts";
import { markdownDocument } from "../../harness/corpus.ts";
import { createMocks, POISON_MARKER, signServiceRoleKey, type FaultPlanInput, type Mocks } from "../../mocks/index.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { ManualClock } from "../../src/resilience/clock.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { createTestServices, fingerprint } from "../support/pipeline.ts";

/** No faults, except that webhooks are the history's to deliver and parses finish at once. */
export const BASELINE_FAULTS: FaultPlanInput = {
  llamaparse: { schedule: { pending: { dist: "fixed", ms: 0 }, running: { dist: "fixed", ms: 0 }, msPerPage: 0 } },
  webhooks: { drop: { rate: 1 } },
};

export const LEASE_SECONDS = 30;
/** Past every lease, webhook deadline, reconciler snooze, backoff and open-circuit hint. */
export const PAST_LEASE_MS = (LEASE_SECONDS + 1) * 1000;
/** A stage that calls OpenAI more often than this in one claim is looping. */
const RUNAWAY_EMBED_CALLS = 12;

/** A content the histories upload: a name, the bytes, and whether LlamaParse fails it. */
export interface Content {
  name: string;
  text: string;
  poison: boolean;
}

const rng = mulberry32(20240607);
/** Small (one embedding batch), medium (several batches) and poison (LlamaParse FAILED). */
export const CONTENTS: readonly Content[] = [
  { name: "small", text: markdownDocument(rng, "Small document", 1_200), poison: false },
  { name: "medium", text: markdownDocument(rng, "Medium document", 11_000), poison: false },
  { name: "poison", text: `# Broken scan\n\n${POISON_MARKER}\n\nThis one never parses.\n`, poison: true },
].map((c) => named(c, c.name));

/** `value`, shown in counterexamples as `label` (not its whole text). */
export function named<T extends object>(value: T, label: string): T {
  return Object.assign(value, { [fc.toStringMethod]: () => label });
}

/** A crash-free run's result for one content: the chunk and vector hashes in order, and the bill. */
export interface Reference {
  chunks: Array<{ chunk_sha: string; vector_sha: string | null }>;
  tokens: number;
  batches: number;
}

/** The pieces of the pipeline a property drives. */
export interface PipelineParts {
  db: TestDatabase;
  mocks: Mocks;
  config: Config;
  /** The services of the worker "process" started with the env (the drain restarts its own). */
  services: WiredServices;
  worker(overrides?: Partial<WorkerOptions<WiredServices>>): BaseWorker<WiredServices>;
  /** Store the file in the mock storage and create its document and job, as the API's upload does. */
  upload(file: { content: string; userId?: string }): Promise<{ documentId: string; jobId: string }>;
}

export interface PropertyEnv {
  env: PipelineParts;
  /** The API deliveries and retries go to (see the file comment). */
  api: FastifyInstance;
  /** Resolves when every parse intake the API handed off has finished. */
  intakeIdle(): Promise<void>;
  /** The services the API's intake uses; the drain replaces them (a restart). */
  apiServices: WiredServices;
  /**
   * The simulated clock: workers and the mocks (LlamaParse's created_at, rate windows) read it.
   * One clock for the whole env, only ever moved forward: the mocks' windows would misbehave if
   * time ran backwards between runs.
   */
  readonly clock: ManualClock;
  /** The clock for a new run: an hour after anything an earlier run did. */
  nextRunClock(): Promise<ManualClock>;
  references: Map<string, Reference>;
  serviceRoleKey: string;
  close(): Promise<void>;
}

const MOCK_ORIGIN = "http://mocks.test";

/**
 * Like `startPipelineEnv` (test/support/pipeline.ts), but the mocks read the run's simulated
 * clock: the submit stage looks its earlier LlamaParse job up by creation time (with a 60 s
 * margin for clock skew), so LlamaParse must live on the same clock as the workers, or every
 * lookup after a clock jump misses and bills a second parse.
 */
export async function startPropertyEnv(seed: number): Promise<PropertyEnv> {
  const db = await createTestDatabase();
  const clock = new ManualClock(Date.parse("2030-01-01T00:00:00Z"));
  const mocks = createMocks({ seed, faults: BASELINE_FAULTS, now: () => clock.now() });
  const msw = setupServer(...mocks.handlers);
  msw.listen({ onUnhandledFrame: "bypass" });
  const log = createLogger({ level: "silent" });
  const config = configForLocalMocks(MOCK_ORIGIN, {
    OPENAI_API_KEY: mocks.keys.openai,
    LLAMA_CLOUD_API_KEY: mocks.keys.llamaCloud,
    SUPABASE_SERVICE_ROLE_KEY: await signServiceRoleKey(mocks.keys.jwtSecret),
    SUPABASE_JWT_SECRET: mocks.keys.jwtSecret,
    DATABASE_URL: db.url,
    // Webhooks are the history's to deliver (the mock drops its own), so this URL is never called.
    WEBHOOK_BASE_URL: "http://127.0.0.1:9",
    WEBHOOK_DEADLINE_SECONDS: "2",
    CHUNK_MAX_TOKENS: "128",
    CHUNK_OVERLAP_TOKENS: "16",
    EMBED_BATCH_SIZE: "16",
    MAX_ATTEMPTS: "100",
    LEASE_SECONDS: String(LEASE_SECONDS),
  });
  const services = createTestServices(config);
  const parts: PipelineParts = {
    db,
    mocks,
    config,
    services,
    worker(overrides = {}) {
      return new BaseWorker<WiredServices>({
        pool: db.pool,
        stages: PIPELINE_STAGES,
        services,
        log,
        concurrency: 1,
        leaseSeconds: LEASE_SECONDS,
        retryBaseMs: 20,
        retryMaxMs: 200,
        pollIntervalMs: 100,
        ...overrides,
      });
    },
    async upload({ content, userId = randomUUID() }) {
      const bytes = new TextEncoder().encode(content);
      const fileSha = sha256(bytes);
      const docId = documentId(userId, fileSha);
      const rawPath = `${userId}/raw/${docId}/doc.md`;
      await services.storage.upload(rawPath, bytes, "text/markdown", { upsert: true });
      await db.pool.query(
        `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
         VALUES ($1, $2, 'doc.md', 'text/markdown', $3, $4, $5) ON CONFLICT DO NOTHING`,
        [docId, userId, bytes.byteLength, fileSha, rawPath],
      );
      const id = jobId(docId);
      await createJob(db.pool, { jobId: id, documentId: docId, correlationId: randomUUID(), maxAttempts: config.MAX_ATTEMPTS });
      return { documentId: docId, jobId: id };
    },
  };

  const inflight = new Set<Promise<unknown>>();
  const holder: { services: WiredServices } = { services: createTestServices(config) };
  const api = await buildApp({
    pool: db.pool,
    config,
    store: services.storage,
    log,
    onParseEvent(event) {
      const s = holder.services;
      const p = webhookIntake({ pool: db.pool, log, storage: s.storage, llamaparse: s.llamaparse, partialParse: "fail" }, event.jobId);
      const tracked = p.catch(() => {}).finally(() => inflight.delete(tracked));
      inflight.add(tracked);
      return p;
    },
  });
  await api.ready();
  const penv: PropertyEnv = {
    env: parts,
    api,
    get apiServices() {
      return holder.services;
    },
    set apiServices(s: WiredServices) {
      holder.services = s;
    },
    clock,
    async nextRunClock() {
      await clock.advance(3_600_000);
      return clock;
    },
    async intakeIdle() {
      // The handler hands off on setImmediate after answering: let it get there first.
      await new Promise((r) => setImmediate(r));
      while (inflight.size > 0) await Promise.allSettled([...inflight]);
    },
    references: new Map(),
    serviceRoleKey: await signServiceRoleKey(mocks.keys.jwtSecret),
    async close() {
      await api.close();
      await mocks.close();
      msw.close();
      await db.drop();
    },
  };
  penv.references = await referenceRun(penv);
  return penv;
}

export { fingerprint };

/** One crash-free run of every non-poison content: what every other history must end with. */
async function referenceRun(p: PropertyEnv): Promise<Map<string, Reference>> {
  const refs = new Map<string, Reference>();
  const clock = await p.nextRunClock();
  const userId = randomUUID();
  const jobs = new Map<string, { jobId: string; documentId: string }>();
  for (const c of CONTENTS.filter((c) => !c.poison)) jobs.set(c.name, await p.env.upload({ content: c.text, userId }));
  await drain(
    p,
    clock,
    [...jobs.values()].map((j) => j.jobId),
  );
  for (const [name, job] of jobs) {
    const rows = await fingerprint(p.env, job.documentId);
    const { rows: prog } = await p.env.db.pool.query("SELECT status, progress FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.jobId]);
    if (prog[0].status !== "complete") throw new Error(`reference run of ${name} ended ${prog[0].status}`);
    refs.set(name, {
      chunks: rows.map((r) => ({ chunk_sha: r.chunk_sha, vector_sha: r.vector_sha })),
      tokens: Number(prog[0].progress.tokens),
      batches: Number(prog[0].progress.batches_done),
    });
  }
  return refs;
}

/** Fault points that also catch a stage that keeps calling OpenAI (a resend loop). */
export class GuardedFaults implements FaultPoints {
  private embedCalls = 0;
  readonly inner: FaultInjector;
  /** The point a crash rule fired at, if it did. */
  crashedAt: string | undefined;
  private readonly flags: { runaway?: string };

  constructor(rules: FaultRule[], flags: { runaway?: string }) {
    this.flags = flags;
    this.inner = new FaultInjector(rules);
  }
  async hit(point: string, info?: { jobId?: string; [k: string]: unknown }): Promise<void> {
    if (point === "call.openai.embed.before" && ++this.embedCalls > RUNAWAY_EMBED_CALLS) {
      this.flags.runaway = `job ${info?.jobId} called OpenAI more than ${RUNAWAY_EMBED_CALLS} times in one claim`;
      throw new SimulatedCrash(point);
    }
    try {
      await this.inner.hit(point, info);
    } catch (err) {
      if (err instanceof SimulatedCrash) this.crashedAt = point;
      throw err;
    }
  }
}

let workerSeq = 0;

/** One claim-and-work on the caller's stack, optionally crashing at `crash` (the `nth` hit). */
export async function step(
  p: PropertyEnv,
  clock: ManualClock,
  opts: { services?: WiredServices; crash?: { point: string | RegExp; nth?: number }; rules?: FaultRule[]; flags?: { runaway?: string } } = {},
): Promise<{ job: ClaimedJob | undefined; faults: GuardedFaults }> {
  const flags = opts.flags ?? {};
  const rules: FaultRule[] = [...(opts.crash ? [{ point: opts.crash.point, nth: opts.crash.nth ?? 1, action: "crash" as const }] : []), ...(opts.rules ?? [])];
  const faults = new GuardedFaults(rules, flags);
  const worker = p.env.worker({
    workerId: `prop-w${++workerSeq}`,
    clock,
    faults,
    concurrency: 1,
    leaseSeconds: LEASE_SECONDS,
    ...(opts.services ? { services: opts.services } : {}),
    random: () => 0.5,
  });
  const job = await worker.runOnce();
  return { job, faults };
}

/**
 * Clear the faults and run fresh workers (a restart: closed circuit breakers) until none of
 * `jobIds` is left actionable, moving the clock past leases and deadlines whenever nothing is
 * due. Throws listing the jobs still not terminal after `maxSteps`.
 */
export async function drain(p: PropertyEnv, clock: ManualClock, jobIds: string[], flags: { runaway?: string } = {}, maxSteps = 200): Promise<void> {
  p.env.mocks.setFaults(BASELINE_FAULTS);
  const services = createTestServices(p.env.config);
  p.apiServices = createTestServices(p.env.config);
  await p.intakeIdle();
  for (let i = 0; i < maxSteps; i++) {
    const { job } = await step(p, clock, { services, flags });
    if (job) continue;
    const states = await statuses(p, jobIds);
    if ([...states.values()].every((s) => isTerminal(s))) return;
    await clock.advance(PAST_LEASE_MS);
  }
  const states = await statuses(p, jobIds);
  throw new Error(
    `drain: jobs still not terminal after ${maxSteps} steps: ${[...states]
      .filter(([, s]) => !isTerminal(s))
      .map(([j, s]) => `${j}=${s}`)
      .join(", ")}`,
  );
}

export async function statuses(p: PropertyEnv, jobIds: string[]): Promise<Map<string, JobStatus>> {
  const { rows } = await p.env.db.pool.query<{ job_id: string; status: JobStatus }>(
    "SELECT job_id, status FROM upload_pipeline.upload_jobs WHERE job_id = ANY($1)",
    [jobIds],
  );
  return new Map(rows.map((r) => [r.job_id, r.status]));
}

/**
 * Problems with a job's `job_events` as a path through the state machine: it starts with
 * (∅ → uploaded), each event starts where the previous ended, each edge is in `EDGES` and was
 * taken by an actor the edge allows. Empty when the path is valid.
 */
export async function eventPathProblems(pool: Pick<pg.Pool, "query">, jobId: string): Promise<string[]> {
  const { rows } = await pool.query<{ from_status: JobStatus | null; to_status: JobStatus; detail: { actor?: string } }>(
    "SELECT from_status, to_status, detail FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id",
    [jobId],
  );
  const problems: string[] = [];
  let at: JobStatus | null = null;
  rows.forEach((e, i) => {
    const edge = EDGES.find((x) => x.from === e.from_status && x.to === e.to_status);
    if (i === 0 && e.from_status !== null) problems.push(`first event starts at ${e.from_status}, not ∅`);
    if (i > 0 && e.from_status !== at) problems.push(`event ${i} starts at ${e.from_status} but the job was in ${at}`);
    if (!edge) problems.push(`event ${i}: ${e.from_status} → ${e.to_status} is not an edge`);
    else if (!edge.actors.includes(e.detail.actor as never)) problems.push(`event ${i}: ${e.from_status} → ${e.to_status} taken by ${e.detail.actor}`);
    at = e.to_status;
  });
  if (rows.length === 0) problems.push("no events");
  return problems;
}

/** Delete everything a run created (its users' documents cascade to jobs, buffers, events, webhook log). */
export async function forgetUsers(p: PropertyEnv, userIds: string[]): Promise<void> {
  await p.intakeIdle();
  await p.env.db.pool.query("DELETE FROM upload_pipeline.documents WHERE user_id = ANY($1::uuid[])", [userIds]);
}

/** A LlamaParse webhook delivery as the sender builds it (SPEC §6), signed with `secret`. */
export function webhookDelivery(secret: string, event: { eventId: string; eventType: string; parseJobId: string; timestamp: number }) {
  const body = JSON.stringify({
    event_id: event.eventId,
    event_type: event.eventType,
    timestamp: event.timestamp,
    data: { id: event.parseJobId, job_id: event.parseJobId },
  });
  return { body, signature: signWebhook(secret, body) };
}

export async function postWebhook(p: PropertyEnv, body: string, signature: string | undefined, eventId: string, eventType: string) {
  const res = await p.api.inject({
    method: "POST",
    url: "/webhooks/llamaparse",
    headers: {
      "content-type": "application/json",
      "user-agent": "llamaindex-webhook-service/1.0",
      "x-webhook-event-id": eventId,
      "x-webhook-event-type": eventType,
      ...(signature ? { "lc-signature": signature } : {}),
    },
    payload: body,
  });
  await p.intakeIdle();
  return res;
}

/** Wait (briefly, real time) until the LlamaParse mock has finished a parse job. */
export async function parseOutcome(p: PropertyEnv, parseJobId: string): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const status = p.env.mocks.state.llamaparse.jobs.get(parseJobId)?.status;
    if (status === "COMPLETED" || status === "FAILED" || status === "CANCELLED") return status;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`LlamaParse job ${parseJobId} did not finish`);
}

/** How many parse jobs LlamaParse holds for one pipeline job (each one is billed). */
export function parseJobsFor(p: PropertyEnv, jobId: string): number {
  return [...p.env.mocks.state.llamaparse.jobs.values()].filter((j) => j.userMetadata?.pipeline_job_id === jobId).length;
}

export { ManualClock };
