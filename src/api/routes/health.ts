/**
 * `GET /healthz`: 200 when the database answers and its schema is the one this code ships
 * (latest migration applied); 503 otherwise, with which of the two failed. Each check has a
 * short timeout so a hung database makes the probe fail rather than hang.
 *
 * A service that refuses the account (as the workers last reported it, `service_conditions`)
 * makes the status `degraded` and is named with the refused answer's code and reason (never a
 * secret). Still 200: this process is healthy, and restarting it cannot fix a key or a quota;
 * alert on `degraded` (or the workers' `upload_pipeline_service_refusing`).
 * `GET /metrics`: the Prometheus exposition (see ../metrics.ts); with `METRICS_TOKEN` set, only
 * for `Authorization: Bearer <METRICS_TOKEN>`.
 */
import type { FastifyInstance } from "fastify";
import { bearerToken, sameSecret } from "../../bearer.ts";
import { migrationStatus } from "../../db/migrate.ts";
import { refusingServices } from "../../db/serviceConditions.ts";
import { ApiError } from "../errors.ts";

const CHECK_TIMEOUT_MS = 2_000;

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export async function healthRoutes(app: FastifyInstance): Promise<void> {
  const { pool, metrics, config } = app.deps;

  app.get("/healthz", async (request, reply) => {
    let database: "up" | "down" = "down";
    let migrations: { expected: number; applied: number; current: boolean } | null = null;
    const services: Record<string, { status: "refusing"; code: string | null; reason: string | null; since: Date | null; reported_by: string }> = {};
    try {
      await withTimeout(pool.query("SELECT 1"), CHECK_TIMEOUT_MS);
      database = "up";
      const status = await withTimeout(migrationStatus(pool), CHECK_TIMEOUT_MS);
      migrations = { ...status, current: status.applied === status.expected };
      for (const row of await withTimeout(refusingServices(pool), CHECK_TIMEOUT_MS)) {
        services[row.service] = { status: "refusing", code: row.code, reason: row.reason, since: row.since, reported_by: row.reported_by };
      }
    } catch (err) {
      request.log.warn({ err: (err as Error).message }, "health check failed");
    }
    const ok = database === "up" && migrations?.current === true;
    const status = !ok ? "unavailable" : Object.keys(services).length > 0 ? "degraded" : "ok";
    return reply.code(ok ? 200 : 503).send({ status, database, migrations, services });
  });

  app.get("/metrics", async (request, reply) => {
    if (config.METRICS_TOKEN !== undefined && !sameSecret(bearerToken(request.headers.authorization), config.METRICS_TOKEN)) {
      throw new ApiError(
        401,
        "unauthorized",
        "GET /metrics needs 'Authorization: Bearer <METRICS_TOKEN>' (set in Prometheus' scrape config as bearer_token).",
        {
          "www-authenticate": 'Bearer realm="metrics"',
        },
      );
    }
    const text = await metrics.render();
    return reply.type(metrics.registry.contentType).send(text);
  });
}
