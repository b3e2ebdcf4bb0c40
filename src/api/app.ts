/**
 * The API as a fastify app, built from its dependencies so tests can pass an in-memory object
 * store and a stand-in parse intake while everything else (Postgres above all) is real.
 * `main.ts` wires the production dependencies and listens.
 *
 * @example
 * const app = await buildApp({ pool, config, store, onParseEvent });
 * const res = await app.inject({ method: "GET", url: "/healthz" });
 */
import Fastify, { type FastifyInstance } from "fastify";
import type pg from "pg";
import type { Config } from "../config.ts";
import { createLogger, REDACT_PATHS, type Logger } from "../logger.ts";
import { createAuthenticator, type Authenticator } from "./auth.ts";
import { ApiError, sendError } from "./errors.ts";
import { createMetrics, type ApiMetrics } from "./metrics.ts";
import { healthRoutes } from "./routes/health.ts";
import { jobRoutes } from "./routes/jobs.ts";
import { uploadRoutes } from "./routes/upload.ts";
import { webhookRoutes } from "./routes/webhook.ts";

/** The three storage operations the API needs; `src/clients/storage.ts`'s client has them all. */
export interface ObjectStore {
  /** Store an object (`upsert: true`: the raw path is deterministic, a rewrite is harmless). */
  upload(path: string, body: Uint8Array | ReadableStream<Uint8Array>, contentType: string, options?: { upsert?: boolean }): Promise<unknown>;
  /** A URL the client can `PUT` the object to without credentials (Supabase signed upload). */
  createSignedUploadUrl(path: string, options?: { upsert?: boolean }): Promise<{ signedUrl: string; token: string; path: string }>;
  exists(path: string): Promise<boolean>;
}

/** What the webhook handler hands to parse intake once a delivery is verified and recorded. */
export interface ParseEvent {
  jobId: string;
  documentId: string;
  parseJobId: string;
  eventId: string;
  eventType: "parse.success" | "parse.partial_success";
  correlationId: string;
}

export type ApiConfig = Pick<
  Config,
  "UPLOAD_MAX_BYTES" | "UPLOAD_ALLOWED_MIME" | "MAX_ATTEMPTS" | "SUPABASE_JWT_SECRET" | "SUPABASE_JWKS_URL" | "WEBHOOK_MAX_BYTES" | "LOG_LEVEL"
>;

export interface ApiDeps {
  pool: pg.Pool;
  config: ApiConfig;
  store: ObjectStore;
  /**
   * Parse intake for a `parse.success` / `parse.partial_success` delivery (production:
   * `ingestParseResult(..., {actor: "webhook", fence: {kind: "unleased"}})`). Called after the
   * delivery is committed to `webhook_log` and the 200 is on its way; not awaited by the
   * request. Failures are logged; the worker's reconciler recovers any job left in
   * `parse_queued`.
   */
  onParseEvent: (event: ParseEvent) => Promise<unknown>;
  log?: Logger;
  /** Clock for the webhook's timestamp window (ms since epoch); tests move it. */
  now?: () => number;
  /** Add Node's default process metrics to /metrics (main.ts does; tests do not). */
  defaultMetrics?: boolean;
  /** Override the authenticator (tests of the JWKS path, or another identity provider). */
  auth?: Authenticator;
}

declare module "fastify" {
  interface FastifyInstance {
    deps: Required<Pick<ApiDeps, "pool" | "config" | "store" | "onParseEvent" | "now">> & { auth: Authenticator; metrics: ApiMetrics };
  }
}

/**
 * Values that never reach a log line. A pino child's `redact` replaces its parent's, so the
 * project-wide paths are repeated here.
 */
const REDACT = [...REDACT_PATHS, "req.headers.authorization", "req.headers['lc-signature']", "req.headers.cookie", "headers['lc-signature']"];

export async function buildApp(deps: ApiDeps): Promise<FastifyInstance> {
  const log = deps.log ?? createLogger({ level: deps.config.LOG_LEVEL, name: "api" });
  const app = Fastify({
    loggerInstance: log.child({}, { redact: { paths: REDACT, censor: "[redacted]" } }),
    requestIdHeader: false,
    bodyLimit: 1024 * 1024,
    // Proto-poisoned JSON (`__proto__`, `constructor.prototype`) is refused with a 400.
    onProtoPoisoning: "error",
    onConstructorPoisoning: "error",
    return503OnClosing: true,
    routerOptions: { ignoreTrailingSlash: true },
  });
  app.decorate("deps", {
    pool: deps.pool,
    config: deps.config,
    store: deps.store,
    onParseEvent: deps.onParseEvent,
    now: deps.now ?? Date.now,
    auth: deps.auth ?? createAuthenticator({ jwtSecret: deps.config.SUPABASE_JWT_SECRET, jwksUrl: deps.config.SUPABASE_JWKS_URL }),
    metrics: createMetrics(deps.pool, { defaultMetrics: deps.defaultMetrics ?? false }),
  });

  app.decorateRequest("principal", null);
  app.setErrorHandler((err, request, reply) => sendError(request, reply, err));
  app.setNotFoundHandler((request, reply) =>
    sendError(request, reply, new ApiError(404, "not_found", `No route ${request.method} ${request.url.split("?")[0]}; see src/api/README.md for the routes.`)),
  );

  await app.register(healthRoutes);
  await app.register(uploadRoutes);
  await app.register(jobRoutes);
  await app.register(webhookRoutes);
  // The instance is typed with pino's Logger; routes only need fastify's base logger interface.
  return app as unknown as FastifyInstance;
}
