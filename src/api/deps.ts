/**
 * What the API is built from. Routes import their types from here, never from `app.ts`, so the
 * app depends on its routes and nothing depends back on the app.
 */
import type pg from "pg";
import type { ObjectStorage } from "../clients/storage.ts";
import type { Config } from "../config.ts";
import type { Logger } from "../logger.ts";
import type { Authenticator } from "./auth.ts";
import type { ApiMetrics } from "./metrics.ts";

/**
 * The storage operations the API needs; `src/clients/storage.ts`'s client has them all.
 * `upload` with `upsert: true` (the raw path is deterministic, a rewrite is harmless);
 * `createSignedUploadUrl` for a URL the client can `PUT` to without credentials; `info`,
 * `download` and `remove` to check, hash and discard what a client put there.
 */
export type ObjectStore = Pick<ObjectStorage, "upload" | "createSignedUploadUrl" | "info" | "download" | "remove">;

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
  | "UPLOAD_MAX_BYTES"
  | "UPLOAD_ALLOWED_MIME"
  | "MAX_ATTEMPTS"
  | "SUPABASE_JWT_SECRET"
  | "SUPABASE_JWKS_URL"
  | "SUPABASE_JWT_AUDIENCE"
  | "SUPABASE_JWT_ISSUER"
  | "METRICS_TOKEN"
  | "WEBHOOK_MAX_BYTES"
  | "LOG_LEVEL"
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

/**
 * Parse intakes the webhook handler started after answering. Graceful shutdown waits for them,
 * so a fetch-and-store is not cut in half; tests await them instead of sleeping.
 */
export class ParseIntakes {
  readonly #inflight = new Set<Promise<void>>();

  track(intake: Promise<void>): void {
    const tracked = intake.finally(() => this.#inflight.delete(tracked));
    this.#inflight.add(tracked);
  }

  /** Resolves once every intake started so far (and any they led to) has finished. */
  async settled(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
  }
}

declare module "fastify" {
  interface FastifyInstance {
    deps: Required<Pick<ApiDeps, "pool" | "config" | "store" | "onParseEvent" | "now">> & {
      auth: Authenticator;
      metrics: ApiMetrics;
      parseIntakes: ParseIntakes;
    };
  }
}
