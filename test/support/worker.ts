import type pg from "pg";
import { createLogger } from "../../src/logger.ts";
import { BaseWorker, type WorkerOptions } from "../../src/worker/BaseWorker.ts";
import type { Stage } from "../../src/worker/stage.ts";

/** A worker with test defaults: quiet, fast polling, short leases. */
export function testWorker<S>(pool: pg.Pool, stages: Stage<S>[], overrides: Partial<WorkerOptions<S>> = {}): BaseWorker<S> {
  return new BaseWorker<S>({
    pool,
    stages,
    services: undefined as S,
    log: createLogger({ level: "silent" }),
    concurrency: 1,
    leaseSeconds: 30,
    retryBaseMs: 1_000,
    retryMaxMs: 60_000,
    pollIntervalMs: 50,
    ...overrides,
  });
}
