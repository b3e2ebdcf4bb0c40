/**
 * The API as a fastify app, built from its dependencies so tests can pass an in-memory object
 * store and a stand-in parse intake while everything else (Postgres above all) is real.
 * `main.ts` wires the production dependencies and listens.
 *
 * Its dependencies are described in `deps.ts`.
 *
 * @example
 * const app = await buildApp({ pool, config, store, onParseEvent });
 * const res = await app.inject({ method: "GET", url: "/healthz" });
 */
import Fastify, { type FastifyInstance } from "fastify";
import { createLogger, REDACT_PATHS } from "../logger.ts";
import { createAuthenticator } from "./auth.ts";
import { ParseIntakes, type ApiDeps } from "./deps.ts";
import { ApiError, sendError } from "./errors.ts";
import { createMetrics } from "./metrics.ts";
import { healthRoutes } from "./routes/health.ts";
import { jobRoutes } from "./routes/jobs.ts";
import { uploadRoutes } from "./routes/upload.ts";
import { webhookRoutes } from "./routes/webhook.ts";
import { registerRequestSpans } from "./requestSpans.ts";

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
    auth:
      deps.auth ??
      createAuthenticator({
        jwtSecret: deps.config.SUPABASE_JWT_SECRET,
        jwksUrl: deps.config.SUPABASE_JWKS_URL,
        audience: deps.config.SUPABASE_JWT_AUDIENCE,
        issuer: deps.config.SUPABASE_JWT_ISSUER,
      }),
    metrics: createMetrics(deps.pool, { defaultMetrics: deps.defaultMetrics ?? false }),
    parseIntakes: new ParseIntakes(),
  });

  app.decorateRequest("principal", null);
  registerRequestSpans(app as unknown as FastifyInstance);
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
