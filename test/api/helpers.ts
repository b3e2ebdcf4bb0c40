/**
 * Shared setup for the API tests: a real migrated database per file (test/support/db.ts), an
 * in-memory object store (storage is the only stand-in), bearer tokens signed like Supabase's,
 * and a way to drive a job to any state through the real `transition()`.
 */
import { randomUUID } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { SignJWT } from "jose";
import type pg from "pg";
import { afterAll, beforeAll } from "vitest";
import { buildApp } from "../../src/api/app.ts";
import type { ApiDeps, ObjectStore, ParseEvent } from "../../src/api/deps.ts";
import { signWebhook } from "../../src/api/routes/webhook.ts";
import type { UploadBody } from "../../src/clients/storage.ts";
import { configForLocalMocks, type Config } from "../../src/config.ts";
import { PermanentError } from "../../src/errors.ts";
import { documentId as makeDocumentId, jobId as makeJobId, sha256 } from "../../src/ids.ts";
import { createLogger } from "../../src/logger.ts";
import { FAILURE_OF, PIPELINE_STATES, type JobStatus, type PipelineState } from "../../src/state-machine/table.ts";
import { createJob, transition } from "../../src/state-machine/transition.ts";
import { createTestDatabase as createDb, type TestDatabase } from "../support/db.ts";

/**
 * `createTestDatabase()` plus an error listener on its pool. `drop()` ends the pool and then
 * `DROP DATABASE … WITH (FORCE)`; pg-pool resolves `end()` before its idle sockets have closed,
 * so the FORCE can terminate one (57P01) and, with no listener, the pool's 'error' event would
 * surface as an unhandled error in whichever test file happens to lose the race.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const db = await createDb();
  db.pool.on("error", () => {});
  return db;
}
export type { TestDatabase };

export const JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

export function testConfig(overrides: Record<string, string> = {}): Config {
  return configForLocalMocks("http://127.0.0.1:9", {
    SUPABASE_JWT_SECRET: JWT_SECRET,
    UPLOAD_MAX_BYTES: "4096",
    UPLOAD_ALLOWED_MIME: "application/pdf,text/plain,text/markdown",
    WEBHOOK_MAX_BYTES: "4096",
    ...overrides,
  });
}

/**
 * Storage stand-in: a Map of path → bytes. Signed upload URLs follow the server's rule (without
 * upsert, a path that holds an object cannot be signed again); `put()` is the client's PUT.
 */
export class MemoryStore implements ObjectStore {
  readonly objects = new Map<string, { bytes: Uint8Array; contentType: string }>();
  readonly signed: string[] = [];
  readonly removed: string[] = [];
  uploads = 0;
  async upload(path: string, body: UploadBody, contentType: string) {
    const bytes = body instanceof Uint8Array ? body : new Uint8Array(await new Response(body as BodyInit).arrayBuffer());
    this.uploads++;
    this.objects.set(path, { bytes, contentType });
    return { path, fullPath: `documents/${path}` };
  }
  async createSignedUploadUrl(path: string, { upsert = false }: { upsert?: boolean } = {}) {
    if (!upsert && this.objects.has(path)) throw new PermanentError("storage_already_exists", `Storage object already exists: ${path}`);
    const token = `tok-${randomUUID()}`;
    this.signed.push(path);
    return { signedUrl: `http://storage.test/storage/v1/object/upload/sign/documents/${path}?token=${token}`, token, path };
  }
  async info(path: string) {
    const o = this.objects.get(path);
    return o ? { size: o.bytes.byteLength, contentType: o.contentType } : null;
  }
  async download(path: string) {
    const o = this.objects.get(path);
    if (!o) throw new PermanentError("storage_not_found", `Storage object not found: ${path}`);
    return new Blob([o.bytes as BlobPart]).stream();
  }
  async remove(paths: string[]) {
    const gone = paths.filter((p) => this.objects.delete(p));
    this.removed.push(...gone);
    return gone;
  }
  /** What a client's PUT to the signed URL does. */
  put(path: string, bytes: Uint8Array | string, contentType = "application/pdf") {
    this.objects.set(path, { bytes: typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes, contentType });
  }
}

export interface TestApp {
  app: FastifyInstance;
  store: MemoryStore;
  intake: ParseEvent[];
  clock: { now: number };
}

export async function makeApp(pool: pg.Pool, overrides: Partial<ApiDeps> & { configOverrides?: Record<string, string> } = {}): Promise<TestApp> {
  const store = new MemoryStore();
  const intake: ParseEvent[] = [];
  const clock = { now: Date.now() };
  const { configOverrides, ...rest } = overrides;
  const app = await buildApp({
    pool,
    config: testConfig(configOverrides),
    store,
    log: createLogger({ level: process.env.TEST_LOG_LEVEL ?? "silent" }),
    now: () => clock.now,
    onParseEvent: async (event) => {
      intake.push(event);
      return { outcome: "pending" };
    },
    ...rest,
  });
  await app.ready();
  return { app, store, intake, clock };
}

/** A bearer token as Supabase signs them (HS256, `sub`, `role`, `aud`, `exp`). */
export async function token(
  claims: { sub?: string; role?: string; [k: string]: unknown } = {},
  options: { secret?: string; expiresIn?: string | number | null; alg?: string } = {},
): Promise<string> {
  const { sub, ...rest } = claims;
  let jwt = new SignJWT({ role: "authenticated", aud: "authenticated", ...rest }).setProtectedHeader({ alg: options.alg ?? "HS256", typ: "JWT" }).setIssuedAt();
  // `expiresIn: null`: a token without `exp`, which must never be accepted.
  if (options.expiresIn !== null) jwt = jwt.setExpirationTime(options.expiresIn ?? "1h");
  if (sub) jwt = jwt.setSubject(sub);
  return jwt.sign(new TextEncoder().encode(options.secret ?? JWT_SECRET));
}

export const bearer = async (userId: string) => ({ authorization: `Bearer ${await token({ sub: userId })}` });
export const serviceBearer = async () => ({ authorization: `Bearer ${await token({ role: "service_role" })}` });

/** A multipart body with one `file` part and optional fields. */
type FilePart = { name: string; type: string; content: string | Uint8Array };

/** A multipart/form-data body: the fields (pairs, to repeat one), then each file part (none, one or several) under `fieldName`. */
export function multipartBody(
  file: FilePart | FilePart[] | null,
  fields: Record<string, string> | Array<[string, string]> = {},
  fieldName = "file",
): { payload: Buffer; headers: Record<string, string> } {
  const boundary = `----test${randomUUID().replace(/-/g, "")}`;
  const chunks: Buffer[] = [];
  for (const [k, v] of Array.isArray(fields) ? fields : Object.entries(fields)) {
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`));
  }
  for (const part of file === null ? [] : [file].flat()) {
    chunks.push(
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${fieldName}"; filename="${part.name}"\r\nContent-Type: ${part.type}\r\n\r\n`),
    );
    chunks.push(Buffer.from(part.content));
    chunks.push(Buffer.from("\r\n"));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { payload: Buffer.concat(chunks), headers: { "content-type": `multipart/form-data; boundary=${boundary}` } };
}

/** Everything the API could change, for before/after comparison. */
export async function snapshot(pool: pg.Pool) {
  const q = async (sql: string) => (await pool.query(sql)).rows;
  return {
    documents: await q("SELECT * FROM upload_pipeline.documents ORDER BY document_id"),
    jobs: await q("SELECT * FROM upload_pipeline.upload_jobs ORDER BY job_id"),
    events: await q("SELECT * FROM upload_pipeline.job_events ORDER BY id"),
    webhooks: await q("SELECT * FROM upload_pipeline.webhook_log ORDER BY id"),
  };
}

export interface SeededJob {
  userId: string;
  documentId: string;
  jobId: string;
  parseJobId: string;
  secret: string;
  rawPath: string;
}

/**
 * A document and its job, driven through the real state machine to `status` (a failed state is
 * reached from `failedFrom`, default the first state of its stage).
 */
export async function seedJob(
  pool: pg.Pool,
  options: { userId?: string; status?: JobStatus; failedFrom?: PipelineState; content?: string; progress?: Record<string, unknown> } = {},
): Promise<SeededJob> {
  const userId = options.userId ?? randomUUID();
  const fileSha = sha256(options.content ?? randomUUID());
  const documentId = makeDocumentId(userId, fileSha);
  const jobId = makeJobId(documentId);
  const rawPath = `${userId}/raw/${documentId}/doc.pdf`;
  await pool.query(
    `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
     VALUES ($1, $2, 'doc.pdf', 'application/pdf', 10, $3, $4)`,
    [documentId, userId, fileSha, rawPath],
  );
  await createJob(pool, { jobId, documentId, correlationId: randomUUID(), maxAttempts: 5 });
  const parseJobId = `pjob-${randomUUID()}`;
  const secret = `whsec-${randomUUID()}`;
  const target = options.status ?? "parse_queued";
  const failed = target.startsWith("failed_");
  const stop: PipelineState = failed
    ? (options.failedFrom ?? (Object.keys(FAILURE_OF) as PipelineState[]).find((s) => FAILURE_OF[s as keyof typeof FAILURE_OF] === target)!)
    : (target as PipelineState);
  let from: PipelineState = "uploaded";
  for (const to of PIPELINE_STATES.slice(1, PIPELINE_STATES.indexOf(stop) + 1)) {
    await leased(pool, jobId, (fence) =>
      transition(pool, {
        jobId,
        from,
        to,
        actor: to === "parsed" ? "reconciler" : "worker",
        fence,
        releaseLease: true,
        ...(to === "parse_queued" ? { parseJobId, webhookSecret: secret } : {}),
        ...(to === "embeddings_stored" && options.progress ? { progress: options.progress } : {}),
      }),
    );
    from = to;
  }
  if (failed) {
    await leased(pool, jobId, (fence) =>
      transition(pool, {
        jobId,
        from,
        to: target,
        actor: "worker",
        fence,
        releaseLease: true,
        lastError: { class: "permanent", code: "test_failure", message: "failed on purpose", stage: from, attempt: 1 },
      }),
    );
  }
  return { userId, documentId, jobId, parseJobId, secret, rawPath };
}

async function leased(pool: pg.Pool, jobId: string, fn: (fence: { kind: "lease"; token: string; workerId: string }) => Promise<unknown>) {
  const token = randomUUID();
  await pool.query(
    "UPDATE upload_pipeline.upload_jobs SET locked_by = 'test-worker', lease_token = $2, lease_expires_at = now() + interval '1 minute', attempts = attempts + 1 WHERE job_id = $1",
    [jobId, token],
  );
  await fn({ kind: "lease", token, workerId: "test-worker" });
}

/** A webhook delivery as LlamaParse sends it, signed with `secret` unless told otherwise. */
export function webhookRequest(
  body: Record<string, unknown> | string,
  secret: string,
  options: { signature?: string | null; contentType?: string; headers?: Record<string, string> } = {},
) {
  const raw = typeof body === "string" ? body : JSON.stringify(body);
  const headers: Record<string, string> = {
    "content-type": options.contentType ?? "application/json",
    "user-agent": "llamaindex-webhook-service/1.0",
    ...options.headers,
  };
  const signature = options.signature === undefined ? signWebhook(secret, raw) : options.signature;
  if (signature !== null) headers["lc-signature"] = signature;
  return { method: "POST" as const, url: "/webhooks/llamaparse", payload: raw, headers };
}

export function parseEvent(parseJobId: string, overrides: Record<string, unknown> = {}, nowMs = Date.now()) {
  return {
    event_id: `evt-${randomUUID()}`,
    event_type: "parse.success",
    timestamp: nowMs / 1000,
    data: { id: parseJobId, job_id: parseJobId },
    ...overrides,
  };
}

/**
 * Per test file: a fresh database and an app over it, built before the tests and closed after.
 * Read `ctx.db` and `ctx.t` inside tests and hooks (they are set once `beforeAll` has run).
 */
export function useTestApp(overrides: Parameters<typeof makeApp>[1] = {}): { db: TestDatabase; t: TestApp } {
  const ctx = {} as { db: TestDatabase; t: TestApp };
  beforeAll(async () => {
    ctx.db = await createTestDatabase();
    ctx.t = await makeApp(ctx.db.pool, overrides);
  });
  afterAll(async () => {
    await ctx.t?.app.close();
    await ctx.db?.drop();
  });
  return ctx;
}
