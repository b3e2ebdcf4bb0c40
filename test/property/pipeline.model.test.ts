/**
 * Model-based test of the whole pipeline: generated histories of uploads, worker steps, crashes
 * at named fault points, clock jumps, webhook deliveries (genuine, duplicate, replayed with other
 * bytes, forged, unsigned, late, for an unknown parse job), 429s and outages, worker restarts and
 * operator retries, run against the real stages, worker, API and Postgres with the mocks
 * in-process. After each command the cheap invariants hold; after the history and a drain the
 * end state is the one a crash-free run reaches.
 */
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { documentId, sha256 } from "../../src/ids.ts";
import { createPipelineServices, type WiredServices } from "../../src/services.ts";
import { isFailed, type JobStatus } from "../../src/state-machine/table.ts";
import {
  BASELINE_FAULTS,
  CONTENTS,
  drain,
  eventPathProblems,
  fingerprint,
  forgetUsers,
  type ManualClock,
  PAST_LEASE_MS,
  parseJobsFor,
  parseOutcome,
  postWebhook,
  startPropertyEnv,
  statuses,
  step,
  webhookDelivery,
  type Content,
  type PropertyEnv,
} from "./harness.ts";
import { checkProperty, timeoutFor } from "./settings.ts";

const FILE = "test/property/pipeline.model.test.ts";
const DEFAULT_RUNS = 20;

let p: PropertyEnv;
beforeAll(async () => {
  p = await startPropertyEnv(17);
}, 120_000);
afterAll(() => p?.close());

// ---------------------------------------------------------------------------------------------
// Model and real system

type FaultKind = "none" | "openai429" | "openaiOutage" | "storageOutage" | "llamaparseOutage";

const FAULT_PLANS: Record<FaultKind, object> = {
  none: BASELINE_FAULTS,
  openai429: { ...BASELINE_FAULTS, openai: { bursts: [{ fault: 429, start: 1, count: 1 }] } },
  openaiOutage: { ...BASELINE_FAULTS, openai: { errors: [{ fault: 503, rate: 1 }] } },
  storageOutage: { ...BASELINE_FAULTS, storage: { errors: [{ fault: 503, rate: 1 }] } },
  llamaparseOutage: { ...BASELINE_FAULTS, llamaparse: { ...BASELINE_FAULTS.llamaparse, errors: [{ fault: 503, rate: 1 }] } },
};

interface Delivery {
  eventId: string;
  eventType: string;
  parseJobId: string;
  timestamp: number;
  body: string;
  signature: string;
  /** The webhook secret of the submission it was delivered for (a retried parse rotates it). */
  secret: string;
}

interface ModelJob {
  jobId: string;
  documentId: string;
  userId: string;
  content: Content;
  delivered: Delivery[];
  /** Operator retries of a failed parse that had a LlamaParse job: each submits a new one. */
  reparses: number;
}

interface Model {
  jobs: ModelJob[];
  faults: FaultKind;
}

interface Real {
  clock: ManualClock;
  /** The current worker "process": replaced by a restart (fresh breakers and rate limiter). */
  services: WiredServices;
  users: string[];
  flags: { runaway?: string };
}

const MAX_JOBS = 4;

/** Cheap invariants after every command. */
async function invariants(m: Model, r: Real): Promise<void> {
  expect(r.flags.runaway, "a stage re-sent embedded chunks in a loop").toBeUndefined();
  if (m.jobs.length === 0) return;
  const states = await statuses(
    p,
    m.jobs.map((j) => j.jobId),
  );
  for (const j of m.jobs) {
    const s = states.get(j.jobId)!;
    // Only the poison document may fail: every other fault here is transient.
    if (isFailed(s)) expect(j.content.poison, `${j.content.name} job ${j.jobId} is ${s}`).toBe(true);
    // One LlamaParse job (one bill) per submission (an operator re-parse is one), whatever crashed between submit and record.
    expect(parseJobsFor(p, j.jobId)).toBeLessThanOrEqual(1 + j.reparses);
  }
}

async function jobRowFor(jobId: string) {
  const { rows } = await p.env.db.pool.query(
    `SELECT status, progress, attempts, last_error, lease_token, locked_by, parse_job_id, webhook_secret, updated_at,
            (SELECT count(*)::int FROM upload_pipeline.webhook_log w WHERE w.job_id = j.job_id) AS deliveries,
            (SELECT count(*)::int FROM upload_pipeline.job_events e WHERE e.job_id = j.job_id) AS events
       FROM upload_pipeline.upload_jobs j WHERE job_id = $1`,
    [jobId],
  );
  return rows[0] as {
    status: JobStatus;
    progress: Record<string, unknown>;
    attempts: number;
    parse_job_id: string | null;
    webhook_secret: string | null;
    deliveries: number;
    events: number;
  };
}

// ---------------------------------------------------------------------------------------------
// Commands

type Cmd = fc.AsyncCommand<Model, Real>;

class UploadNew implements Cmd {
  readonly content: Content;

  constructor(content: Content) {
    this.content = content;
  }
  check = (m: Readonly<Model>) => m.jobs.length < MAX_JOBS && m.faults !== "storageOutage";
  async run(m: Model, r: Real) {
    const userId = randomUUID();
    r.users.push(userId);
    const ids = await p.env.upload({ content: this.content.text, userId });
    expect(ids.documentId).toBe(documentId(userId, sha256(this.content.text)));
    m.jobs.push({ ...ids, userId, content: this.content, delivered: [], reparses: 0 });
    await invariants(m, r);
  }
  toString = () => `upload(${this.content.name})`;
}

class UploadAgain implements Cmd {
  readonly pick: number;

  constructor(pick: number) {
    this.pick = pick;
  }
  check = (m: Readonly<Model>) => m.jobs.length > 0 && m.faults !== "storageOutage";
  async run(m: Model, r: Real) {
    const j = m.jobs[this.pick % m.jobs.length]!;
    const before = await jobRowFor(j.jobId);
    const ids = await p.env.upload({ content: j.content.text, userId: j.userId });
    // The same user and bytes: the same document and job, and nothing new in the job's history.
    expect(ids).toEqual({ documentId: j.documentId, jobId: j.jobId });
    const after = await jobRowFor(j.jobId);
    expect(after.events).toBe(before.events);
    expect(after.status).toBe(before.status);
    const { rows } = await p.env.db.pool.query("SELECT count(*)::int AS n FROM upload_pipeline.upload_jobs WHERE document_id = $1", [j.documentId]);
    expect(rows[0].n).toBe(1);
    await invariants(m, r);
  }
  toString = () => `uploadAgain(#${this.pick})`;
}

/** A crash: at a named point (its nth hit), or at whatever the kth point this step passes is. */
type Crash = { point: string; nth: number } | { kth: number };

class Step implements Cmd {
  /** Where the crash actually happened (for the report). */
  private crashedAt: string | undefined;
  readonly crash: Crash | null;

  constructor(crash: Crash | null) {
    this.crash = crash;
  }
  check = () => true;
  async run(m: Model, r: Real) {
    const crash = this.crash === null ? undefined : "kth" in this.crash ? { point: /./, nth: this.crash.kth } : this.crash;
    // runOnce never throws: every error is a retry, a failure, or (simulated) a dead process.
    const { faults } = await step(p, r.clock, { services: r.services, flags: r.flags, ...(crash ? { crash } : {}) });
    this.crashedAt = faults.crashedAt;
    await invariants(m, r);
  }
  toString = () => {
    if (!this.crash) return "step";
    const at = "kth" in this.crash ? `point #${this.crash.kth}` : `${this.crash.point}#${this.crash.nth}`;
    return `crashAt(${at}${this.crashedAt ? ` = ${this.crashedAt}` : ""})`;
  };
}

class Advance implements Cmd {
  readonly ms: number;

  constructor(ms: number) {
    this.ms = ms;
  }
  check = () => true;
  async run(m: Model, r: Real) {
    await r.clock.advance(this.ms);
    await invariants(m, r);
  }
  toString = () => `advance(${this.ms / 1000}s)`;
}

class Restart implements Cmd {
  check = () => true;
  async run(m: Model, r: Real) {
    r.services = createPipelineServices(p.env.config);
    await invariants(m, r);
  }
  toString = () => "restartWorker";
}

class Faults implements Cmd {
  readonly kind: FaultKind;

  constructor(kind: FaultKind) {
    this.kind = kind;
  }
  check = () => true;
  async run(m: Model, r: Real) {
    p.env.mocks.setFaults(FAULT_PLANS[this.kind]);
    m.faults = this.kind;
    await invariants(m, r);
  }
  toString = () => `faults(${this.kind})`;
}

type WebhookKind = "genuine" | "duplicate" | "resigned" | "forged" | "unsigned" | "late";

class Webhook implements Cmd {
  readonly pick: number;
  readonly kind: WebhookKind;

  constructor(pick: number, kind: WebhookKind) {
    this.pick = pick;
    this.kind = kind;
  }
  check = (m: Readonly<Model>) => m.jobs.length > 0;
  async run(m: Model, r: Real) {
    const j = m.jobs[this.pick % m.jobs.length]!;
    const before = await jobRowFor(j.jobId);
    const now = Date.now() / 1000;
    if (!before.parse_job_id || !before.webhook_secret) {
      // Not submitted yet: a delivery for a parse job nobody waits for is refused (as if forged), harmlessly.
      const d = webhookDelivery("whatever", { eventId: randomUUID(), eventType: "parse.success", parseJobId: randomUUID(), timestamp: now });
      const res = await postWebhook(p, d.body, d.signature, "x", "parse.success");
      expect(res.statusCode).toBe(401);
      return this.unchanged(j, before, m, r);
    }
    const last = j.delivered.at(-1);
    if (this.kind === "duplicate" && last) {
      // The genuine sender retrying: the same bytes answer 2xx and change nothing. Once a retried
      // job's new submission has rotated its webhook secret, the old bytes no longer verify: they
      // are refused like a forgery, and still change nothing.
      const res = await postWebhook(p, last.body, last.signature, last.eventId, last.eventType);
      const signedWithCurrentSecret = webhookDelivery(before.webhook_secret, last).signature === last.signature;
      expect(res.statusCode, res.body).toBe(signedWithCurrentSecret ? 200 : 401);
      if (signedWithCurrentSecret) expect(res.json()).toMatchObject({ duplicate: true });
      return this.unchanged(j, before, m, r);
    }
    if (this.kind === "resigned" && last) {
      // LlamaParse re-signing its retry (same event_id, new timestamp) with the secret of the
      // submission the event belongs to: a duplicate, 2xx, nothing changes. Once a retried job's
      // new submission has rotated the secret, that delivery is refused like a forgery instead.
      const d = webhookDelivery(last.secret, { ...last, timestamp: last.timestamp + 0.25 });
      const res = await postWebhook(p, d.body, d.signature, last.eventId, last.eventType);
      const current = last.secret === before.webhook_secret;
      expect(res.statusCode, res.body).toBe(current ? 200 : 401);
      if (current) expect(res.json()).toMatchObject({ duplicate: true });
      return this.unchanged(j, before, m, r);
    }
    const outcome = await parseOutcome(p, before.parse_job_id);
    const eventType = outcome === "COMPLETED" ? "parse.success" : "parse.error";
    const event = { eventId: randomUUID(), eventType, parseJobId: before.parse_job_id, timestamp: now };
    if (this.kind === "forged" || this.kind === "unsigned") {
      const d = webhookDelivery(`not-${before.webhook_secret}`, event);
      const res = await postWebhook(p, d.body, this.kind === "forged" ? d.signature : undefined, event.eventId, eventType);
      expect(res.statusCode, res.body).toBe(401);
      return this.unchanged(j, before, m, r);
    }
    if (this.kind === "late") {
      const d = webhookDelivery(before.webhook_secret, { ...event, timestamp: now - 600 });
      const res = await postWebhook(p, d.body, d.signature, event.eventId, eventType);
      expect(res.statusCode, res.body).toBe(401);
      return this.unchanged(j, before, m, r);
    }
    // Genuine (also what "duplicate"/"resigned" become when nothing was delivered yet).
    const d = webhookDelivery(before.webhook_secret, event);
    const res = await postWebhook(p, d.body, d.signature, event.eventId, eventType);
    expect(res.statusCode, res.body).toBe(200);
    j.delivered.push({ ...event, ...d, secret: before.webhook_secret });
    const after = await jobRowFor(j.jobId);
    expect(after.deliveries).toBe(before.deliveries + 1);
    await invariants(m, r);
  }
  private async unchanged(j: ModelJob, before: Awaited<ReturnType<typeof jobRowFor>>, m: Model, r: Real) {
    expect(await jobRowFor(j.jobId)).toEqual(before);
    await invariants(m, r);
  }
  toString = () => `webhook(#${this.pick}, ${this.kind})`;
}

class Retry implements Cmd {
  readonly pick: number;

  constructor(pick: number) {
    this.pick = pick;
  }
  check = (m: Readonly<Model>) => m.jobs.length > 0;
  async run(m: Model, r: Real) {
    const j = m.jobs[this.pick % m.jobs.length]!;
    const before = await jobRowFor(j.jobId);
    const res = await p.api.inject({
      method: "POST",
      url: `/jobs/${j.documentId}/retry`,
      headers: { authorization: `Bearer ${p.serviceRoleKey}` },
    });
    if (isFailed(before.status)) {
      // Back to where it failed from (a failed parse: to uploaded, a new parse), attempts
      // reset; the buffers keep what they hold.
      expect(res.statusCode, res.body).toBe(200);
      const { rows } = await p.env.db.pool.query(
        "SELECT from_status FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status = $2 ORDER BY id DESC LIMIT 1",
        [j.jobId, before.status],
      );
      const after = await jobRowFor(j.jobId);
      expect(after.status).toBe(before.status === "failed_parse" ? "uploaded" : rows[0].from_status);
      if (before.status === "failed_parse" && before.parse_job_id) j.reparses += 1;
      expect(after.attempts).toBe(0);
    } else {
      expect(res.statusCode, res.body).toBe(409);
      expect(await jobRowFor(j.jobId)).toEqual(before);
    }
    await invariants(m, r);
  }
  toString = () => `retry(#${this.pick})`;
}

// Every named point a stage passes; nth 2 reaches the second embedding batch or chunk batch.
const CRASH_POINTS = [
  "claim.after",
  "stage.submit_parse.before",
  "commit.parse_intent.before",
  "call.storage.download.before",
  "call.llamaparse.submit.before",
  "call.llamaparse.submit.after",
  "commit.parse_queued.before",
  "stage.reconcile_parse.before",
  "call.llamaparse.get.after",
  "call.storage.upload.before",
  "call.storage.upload.after",
  "commit.parsed.before",
  "commit.parsed.after",
  "stage.validate.before",
  "commit.parse_validated.before",
  "commit.parse_validated.after",
  "stage.chunk.before",
  "commit.chunks.before",
  "commit.chunks.after",
  "commit.chunks_stored.before",
  "stage.embed.before",
  "commit.embedding_queued.after",
  "call.openai.embed.before",
  "call.openai.embed.after",
  "commit.vectors.before",
  "commit.vectors.after",
  "stage.finish.before",
  "commit.complete.before",
  "commit.complete.after",
] as const;

const pick = fc.nat({ max: MAX_JOBS - 1 });
const commands = [
  fc.constantFrom(...CONTENTS).map((c) => new UploadNew(c)),
  pick.map((i) => new UploadAgain(i)),
  fc.constant(null).map(() => new Step(null)),
  fc.constant(null).map(() => new Step(null)),
  fc.constant(null).map(() => new Step(null)),
  fc.record({ point: fc.constantFrom(...CRASH_POINTS), nth: fc.constantFrom(1, 1, 2) }).map((c) => new Step(c)),
  fc.integer({ min: 1, max: 12 }).map((kth) => new Step({ kth })),
  fc.integer({ min: 1, max: 12 }).map((kth) => new Step({ kth })),
  fc.constantFrom(3_000, PAST_LEASE_MS).map((ms) => new Advance(ms)),
  fc.constantFrom(3_000, PAST_LEASE_MS).map((ms) => new Advance(ms)),
  fc.constant(null).map(() => new Restart()),
  fc.constantFrom<FaultKind>("none", "none", "openai429", "openaiOutage", "storageOutage", "llamaparseOutage").map((k) => new Faults(k)),
  fc.tuple(pick, fc.constantFrom<WebhookKind>("genuine", "genuine", "duplicate", "resigned", "forged", "unsigned", "late")).map(([i, k]) => new Webhook(i, k)),
  pick.map((i) => new Retry(i)),
];

// ---------------------------------------------------------------------------------------------

describe("the pipeline under generated histories", () => {
  // After any history of uploads, steps, crashes, clock jumps, webhooks (genuine or not), faults, restarts and retries, and a drain, every job is terminal as the model predicts, with the chunks and vectors of a crash-free run, no duplicate rows, one LlamaParse job, and a valid event path.
  it(
    "any history ends where a crash-free run ends",
    async () => {
      await checkProperty(
        (replayPath) =>
          fc.asyncProperty(
            fc.array(fc.constantFrom(...CONTENTS), { minLength: 1, maxLength: 2 }),
            fc.commands(commands, { maxCommands: 40, size: "medium", ...(replayPath ? { replayPath } : {}) }),
            async (initial, cmds) => {
              const r: Real = { clock: await p.nextRunClock(), services: createPipelineServices(p.env.config), users: [], flags: {} };
              const m: Model = { jobs: [], faults: "none" };
              p.env.mocks.setFaults(BASELINE_FAULTS);
              try {
                for (const c of initial) await new UploadNew(c).run(m, r);
                await fc.asyncModelRun(() => ({ model: m, real: r }), cmds);
                await drain(
                  p,
                  r.clock,
                  m.jobs.map((j) => j.jobId),
                  r.flags,
                );
                await finalChecks(m, r);
              } finally {
                await forgetUsers(p, r.users);
              }
            },
          ),
        { name: "any history ends where a crash-free run ends", file: FILE, defaultRuns: DEFAULT_RUNS },
      );
    },
    timeoutFor(DEFAULT_RUNS, 4_000),
  );
});

async function finalChecks(m: Model, r: Real): Promise<void> {
  expect(r.flags.runaway).toBeUndefined();
  const states = await statuses(
    p,
    m.jobs.map((j) => j.jobId),
  );
  for (const j of m.jobs) {
    const status = states.get(j.jobId);
    // Terminal as predicted: LlamaParse fails the poison document, everything else completes.
    expect(status, `${j.content.name} job ${j.jobId}`).toBe(j.content.poison ? "failed_parse" : "complete");
    expect(await eventPathProblems(p.env.db.pool, j.jobId)).toEqual([]);
    const row = await jobRowFor(j.jobId);
    expect(row).toMatchObject({ lease_token: null, locked_by: null });
    // One LlamaParse job (one bill) per submission, whatever crashed between its submission and
    // our record of it; an operator's retry of a failed parse is a new submission.
    expect(parseJobsFor(p, j.jobId)).toBe(1 + j.reparses);
    if (j.content.poison) continue;
    const ref = p.references.get(j.content.name)!;
    const rows = await fingerprint(p.env, j.documentId);
    // The same chunks and vectors as a crash-free run, each chunk with exactly one vector.
    expect(rows.map((x) => ({ chunk_sha: x.chunk_sha, vector_sha: x.vector_sha }))).toEqual(ref.chunks);
    expect(rows.filter((x) => x.n !== 1)).toEqual([]);
    const { rows: ords } = await p.env.db.pool.query<{ n: number; distinct_ords: number; max_ord: number }>(
      `SELECT count(*)::int AS n, count(DISTINCT chunk_ord)::int AS distinct_ords, max(chunk_ord)::int AS max_ord
         FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1`,
      [j.documentId],
    );
    expect(ords[0]).toEqual({ n: ref.chunks.length, distinct_ords: ref.chunks.length, max_ord: ref.chunks.length - 1 });
    // Counters equal the buffers; every batch recorded once (a lost answer is billed, never recorded twice).
    expect(row.progress).toMatchObject({
      chunks_total: ref.chunks.length,
      chunks_done: ref.chunks.length,
      vectors_done: ref.chunks.length,
      batches_done: ref.batches,
      tokens: ref.tokens,
    });
  }
}
