/**
 * The API with its production dependencies: the same Storage and LlamaParse clients the worker
 * uses (behind the same breakers), and the real parse intake behind the webhook. `npm run api`,
 * the scenario runner and the end-to-end tests all build it here.
 */
import type pg from "pg";
import type { Config } from "../config.ts";
import type { Logger } from "../logger.ts";
import { createPipelineServices } from "../services.ts";
import { webhookIntake } from "../stages/parseIntake.ts";
import { buildApp } from "./app.ts";

export async function buildWiredApp(options: { pool: pg.Pool; config: Config; log: Logger; defaultMetrics?: boolean }) {
  const { storage, llamaparse } = createPipelineServices(options.config);
  const intake = { pool: options.pool, log: options.log.child({ component: "parse-intake" }), storage, llamaparse, partialParse: options.config.PARTIAL_PARSE };
  return buildApp({
    pool: options.pool,
    config: options.config,
    store: storage,
    log: options.log,
    defaultMetrics: options.defaultMetrics ?? false,
    onParseEvent: (event) => webhookIntake(intake, event.jobId),
  });
}
