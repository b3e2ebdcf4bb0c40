/**
 * Account-level refusals (see `ACCOUNT_ERROR_CODES`) are a condition of the fleet: when a
 * breaker starts or stops refusing, the worker says so once — one log line, a metric, and a row
 * in `service_conditions` that the API's `/healthz` shows. The jobs meanwhile are parked, and
 * resume by themselves when a probe finds the credential fixed.
 */
import type pg from "pg";
import { recordServiceCondition } from "../db/serviceConditions.ts";
import { coerceError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { SERVICES, type Breakers } from "../resilience/breakers.ts";
import type { WorkerMetrics } from "./metrics.ts";

export function reportServiceConditions(
  breakers: Breakers,
  deps: { pool: pg.Pool; log: Logger; metrics?: WorkerMetrics | undefined; workerId: string },
): { dispose(): void } {
  const subscriptions = SERVICES.map((service) =>
    breakers[service].onRefusalChange((refusal) => {
      if (refusal) {
        deps.log.error(
          { service, code: refusal.code, reason: refusal.message, since: refusal.since },
          `${service} refuses the account: jobs that need it are parked until a probe succeeds`,
        );
      } else {
        deps.log.info({ service }, `${service} accepts the account again: parked jobs resume`);
      }
      deps.metrics?.serviceConditionChanged(service, refusal ? "refusing" : "ok");
      recordServiceCondition(deps.pool, { service, refusal, workerId: deps.workerId }).catch((err) =>
        deps.log.warn({ service, err: coerceError(err).message }, "could not record the service condition"),
      );
    }),
  );
  return {
    dispose: () => {
      for (const s of subscriptions) s.dispose();
    },
  };
}
