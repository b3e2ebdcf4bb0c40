/**
 * LlamaParse's webhook sender (SPEC §6): JSON body `{event_id, event_type, timestamp, data:
 * {id, job_id}}`, the `User-Agent`, `X-Webhook-Event-*` and custom headers, and
 * `LC-Signature: sha256=<hex HMAC-SHA256(raw body)>` keyed with the job's
 * `webhook_signing_secret`. Up to 3 attempts (retry on non-2xx or network error after 1 s, then
 * 2 s), 30 s timeout per attempt; any 2xx counts as delivered. The plan's `webhooks` section
 * adds duplicates, delays, reordering, drops, forged signatures and replays — each drawn once per
 * (job content, event) so a seeded run replays the same faults whatever the request order.
 */
import { createHmac } from "node:crypto";
import type { WebhookFaults } from "../shared/faults.ts";
import { drawLatency } from "../shared/faults.ts";
import { sleep, type MockContext } from "../shared/http.ts";
import { rngFor, seededUuid } from "../shared/rng.ts";
import type { WebhookKind, WebhookOutcome } from "../shared/stats.ts";

/** The events a parse job emits. */
export type WebhookEventType = "parse.pending" | "parse.running" | "parse.success" | "parse.error" | "parse.partial_success" | "parse.cancelled";

/** One entry of `webhook_configurations`, as the job was created with it. */
export interface WebhookConfiguration {
  webhook_url?: string | null;
  webhook_headers?: Record<string, unknown> | null;
  webhook_events?: string[] | null;
  webhook_output_format?: "json" | "string" | null;
  webhook_signing_secret?: string | null;
}

/** One delivery as it happened (no secrets, no headers). */
export interface DeliveryRecord {
  jobId: string;
  eventId: string;
  eventType: WebhookEventType;
  kind: WebhookKind;
  /** The URL it went to (after `webhookBaseUrl` rewriting). */
  url: string;
  /** Status of each attempt; `"error"` for a network error or timeout. */
  attempts: Array<number | "error">;
  outcome: WebhookOutcome;
  /** The timestamp in the body (Unix seconds). */
  timestamp: number;
  /** Milliseconds since the mocks started when the delivery finished. */
  finishedAtMs: number;
}

/** Timing of the sender; tests scale the delays down. */
export interface WebhookSenderOptions {
  /** Waits before the 2nd and 3rd attempts (ms). Default `[1000, 2000]`. */
  retryDelaysMs?: readonly number[];
  /** Per-attempt timeout (ms). Default 30 000. */
  timeoutMs?: number;
  /**
   * When set, every webhook URL's origin is replaced by this base (its path kept, relative URLs
   * resolved against it): a worker can register its public URL while the mock delivers locally.
   */
  webhookBaseUrl?: string;
}

const LOOPBACK = /^(localhost|127(?:\.\d{1,3}){3}|\[::1\]|::1)$/i;

/** Computes the `LC-Signature` header value for a raw body. */
export function signWebhook(secret: string, rawBody: string | Uint8Array): string {
  return `sha256=${createHmac("sha256", secret).update(rawBody).digest("hex")}`;
}

interface Prepared {
  url: string;
  body: string;
  headers: Record<string, string>;
  payload: { event_id: string; event_type: WebhookEventType; timestamp: number; data: { id: string; job_id: string } };
}

/** Sends the webhooks of parse jobs and keeps a log of every delivery. */
export class WebhookSender {
  readonly log: DeliveryRecord[] = [];
  #inFlight = new Set<Promise<void>>();
  #held = new Set<() => void>();
  #startedAt: number;
  readonly #retryDelays: readonly number[];
  readonly #timeoutMs: number;

  private readonly ctx: MockContext;
  private readonly options: WebhookSenderOptions;

  constructor(ctx: MockContext, options: WebhookSenderOptions = {}) {
    this.ctx = ctx;
    this.options = options;
    this.#retryDelays = options.retryDelaysMs ?? [1000, 2000];
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#startedAt = ctx.now();
  }

  /** Resolves when no delivery (including held, delayed and replayed ones) is pending. */
  async idle(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  /** Forgets the delivery log (pending deliveries still finish). */
  reset(): void {
    this.log.length = 0;
    this.#startedAt = this.ctx.now();
  }

  /**
   * Queues the delivery of `eventType` for a job to every matching configuration.
   * @param key a stable key for the job (its content hash and occurrence) that seeds the faults
   */
  emit(jobId: string, key: string, eventType: WebhookEventType, configs: readonly WebhookConfiguration[]): void {
    configs.forEach((config, index) => {
      if (!config.webhook_url) return;
      if (config.webhook_events && config.webhook_events.length > 0 && !config.webhook_events.includes(eventType)) return;
      const task = this.#deliver(jobId, `${key}:${index}`, eventType, config).catch(() => {});
      this.#inFlight.add(task);
      void task.finally(() => this.#inFlight.delete(task));
    });
  }

  #resolveUrl(raw: string): string {
    const base = this.options.webhookBaseUrl;
    if (!base) return raw;
    let parsed: URL;
    try {
      parsed = new URL(raw);
    } catch {
      return new URL(raw, base).toString();
    }
    const origin = new URL(base);
    const basePath = origin.pathname.replace(/\/$/, "");
    return new URL(`${basePath}${parsed.pathname}${parsed.search}`, origin.origin).toString();
  }

  #prepare(jobId: string, key: string, eventType: WebhookEventType, config: WebhookConfiguration, timestampSeconds: number): Prepared {
    const payload = {
      // Unique per mock instance (a restarted mock must not repeat a delivery key the database
      // already holds); the same within one instance, so duplicates and replays share it.
      event_id: seededUuid(this.ctx.faults.seed, "webhook-event", this.ctx.instance, key, eventType),
      event_type: eventType,
      timestamp: timestampSeconds,
      data: { id: jobId, job_id: jobId },
    };
    const object = JSON.stringify(payload);
    // 'string' (LlamaParse's default) sends the payload as a JSON-encoded string.
    const body = config.webhook_output_format === "json" ? object : JSON.stringify(object);
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "user-agent": "llamaindex-webhook-service/1.0",
      "x-webhook-event-id": payload.event_id,
      "x-webhook-event-type": eventType,
    };
    for (const [name, value] of Object.entries(config.webhook_headers ?? {})) {
      if (value !== null && value !== undefined) headers[name.toLowerCase()] = String(value);
    }
    if (config.webhook_signing_secret) headers["lc-signature"] = signWebhook(config.webhook_signing_secret, body);
    return { url: this.#resolveUrl(config.webhook_url ?? ""), body, headers, payload };
  }

  async #deliver(jobId: string, key: string, eventType: WebhookEventType, config: WebhookConfiguration): Promise<void> {
    const plan: WebhookFaults = this.ctx.faults.plan.webhooks ?? {};
    const rng = rngFor(this.ctx.faults.seed, "webhook", key, eventType);
    // One draw per rule, always in this order, so adding a rule never shifts the others' draws.
    const hit = (rule: { rate: number; events?: string[] | undefined } | undefined): boolean => {
      const draw = rng();
      return rule !== undefined && (!rule.events || rule.events.includes(eventType)) && draw < rule.rate;
    };
    const drop = hit(plan.drop);
    const forge = hit(plan.forge);
    const duplicate = hit(plan.duplicate);
    const delay = hit(plan.delay);
    const reorder = hit(plan.reorder);
    const replay = hit(plan.replay);
    const delayMs = delay && plan.delay ? drawLatency(plan.delay.latency, rng) : 0;
    const decided = { drop, forge, duplicate, delay, reorder, replay };
    for (const [fault, yes] of Object.entries(decided)) {
      if (yes) this.ctx.faults.record({ service: "webhooks", route: eventType, fingerprint: key, occurrence: 1, fault, source: "webhook" });
    }

    const prepared = this.#prepare(jobId, key, eventType, config, this.ctx.now() / 1000);
    if (!this.#allowed(prepared.url)) {
      this.#record(jobId, prepared, "genuine", [], "blocked");
      return;
    }
    if (drop) {
      this.#record(jobId, prepared, "genuine", [], "dropped");
      return;
    }
    if (delayMs > 0) await sleep(delayMs, this.ctx.closing);
    if (reorder && plan.reorder) await this.#hold(plan.reorder.maxHoldMs);
    if (forge && plan.forge) {
      const forged = { ...prepared, headers: { ...prepared.headers } };
      if (plan.forge.mode === "no-signature") delete forged.headers["lc-signature"];
      else forged.headers["lc-signature"] = signWebhook(`forged-${rng().toString(36)}`, prepared.body);
      await this.#send(jobId, forged, "forged", 1);
      if (plan.forge.replaceGenuine) return;
    }
    await this.#send(jobId, prepared, "genuine", this.#retryDelays.length + 1, () => this.#releaseHeld());
    if (duplicate && plan.duplicate) {
      for (let i = 0; i < plan.duplicate.times; i++) {
        if (plan.duplicate.gapMs > 0) await sleep(plan.duplicate.gapMs, this.ctx.closing);
        await this.#send(jobId, prepared, "duplicate", this.#retryDelays.length + 1);
      }
    }
    if (replay && plan.replay) {
      await sleep(plan.replay.afterMs, this.ctx.closing);
      const timestamp = plan.replay.resign ? this.ctx.now() / 1000 : prepared.payload.timestamp - (plan.replay.staleSeconds ?? 0);
      const copy = plan.replay.resign || plan.replay.staleSeconds !== undefined ? this.#prepare(jobId, key, eventType, config, timestamp) : prepared;
      await this.#send(jobId, copy, "replay", 1);
    }
  }

  #allowed(url: string): boolean {
    try {
      const u = new URL(url);
      return (u.protocol === "http:" || u.protocol === "https:") && LOOPBACK.test(u.hostname);
    } catch {
      return false;
    }
  }

  #hold(maxMs: number): Promise<void> {
    return new Promise((resolve) => {
      const release = () => {
        clearTimeout(timer);
        this.#held.delete(release);
        resolve();
      };
      const timer = setTimeout(release, maxMs);
      this.#held.add(release);
    });
  }

  #releaseHeld(): void {
    for (const release of [...this.#held]) release();
  }

  async #send(jobId: string, prepared: Prepared, kind: WebhookKind, maxAttempts: number, afterFirstAttempt?: () => void): Promise<void> {
    const attempts: Array<number | "error"> = [];
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      if (this.ctx.closing.aborted) break;
      let status: number | "error";
      try {
        const response = await fetch(prepared.url, {
          method: "POST",
          headers: prepared.headers,
          body: prepared.body,
          redirect: "manual",
          signal: AbortSignal.any([AbortSignal.timeout(this.#timeoutMs), this.ctx.closing]),
        });
        await response.arrayBuffer().catch(() => undefined);
        status = response.status;
      } catch {
        status = "error";
      }
      this.ctx.stats.webhookAttempts++;
      attempts.push(status);
      if (attempt === 1) afterFirstAttempt?.();
      if (typeof status === "number" && status >= 200 && status < 300) break;
      const wait = this.#retryDelays[attempt - 1];
      if (attempt < maxAttempts && wait !== undefined) await sleep(wait, this.ctx.closing);
    }
    const last = attempts.at(-1);
    const outcome: WebhookOutcome =
      typeof last === "number" && last >= 200 && last < 300 ? "delivered" : typeof last === "number" && last >= 400 && last < 500 ? "rejected" : "failed";
    this.#record(jobId, prepared, kind, attempts, outcome);
  }

  #record(jobId: string, prepared: Prepared, kind: WebhookKind, attempts: Array<number | "error">, outcome: WebhookOutcome): void {
    this.ctx.stats.recordWebhook(kind, outcome);
    this.log.push({
      jobId,
      eventId: prepared.payload.event_id,
      eventType: prepared.payload.event_type,
      kind,
      url: prepared.url,
      attempts,
      outcome,
      timestamp: prepared.payload.timestamp,
      finishedAtMs: this.ctx.now() - this.#startedAt,
    });
  }
}
