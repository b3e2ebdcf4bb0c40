/**
 * Counters every mock updates, served by `GET /__admin/stats`. Plain data: a snapshot is JSON.
 */

/** Who sent a webhook delivery: the genuine sender, a duplicate, a forger or a replayer. */
export type WebhookKind = "genuine" | "duplicate" | "forged" | "replay";
/**
 * How a delivery ended: `delivered` (a 2xx), `rejected` (4xx, no retry for forged/replayed copies
 * or after the last attempt), `failed` (5xx or network error after the last attempt),
 * `dropped` (by the fault plan), `blocked` (the URL is not on this machine; never sent).
 */
export type WebhookOutcome = "delivered" | "rejected" | "failed" | "dropped" | "blocked";

/** Usage the OpenAI mock billed (successful answers only). */
export interface ModelUsage {
  requests: number;
  inputs: number;
  prompt_tokens: number;
}

/** The shape of `GET /__admin/stats`. */
export interface MockStatsSnapshot {
  /** Milliseconds since the mocks started or were last reset. */
  uptimeMs: number;
  /** Answers by route id and HTTP status (`"reset"`/`"hang"` for dropped connections). */
  requests: Record<string, Record<string, number>>;
  /** Every 429 answered, by route id. */
  rateLimited: { total: number; byRoute: Record<string, number> };
  /** Injected faults by route id and fault kind. */
  faults: Record<string, Record<string, number>>;
  openai: {
    /** Billed usage by model (`prompt_tokens` = `usage.prompt_tokens` summed). */
    usage: Record<string, ModelUsage>;
    /** 429s from the RPM/TPM windows, by limit type. */
    rateLimitHits: { requests: number; tokens: number };
    /** Usage billed through the Batch API (successful request lines of finished batches), by model: half price. */
    batchUsage: Record<string, ModelUsage>;
    /** Batches created, and batches by the terminal status they reached. */
    batches: { created: number; finished: Record<string, number> };
  };
  llamaparse: {
    jobsCreated: number;
    /** Jobs that reached a terminal status, by status. */
    jobsFinished: Record<string, number>;
    /** Pages of COMPLETED jobs. */
    pagesParsed: number;
  };
  storage: { buckets: number; objects: number; bytes: number };
  webhooks: {
    /** HTTP attempts made (every try of every delivery). */
    attempts: number;
    /** Deliveries by kind and outcome. */
    deliveries: Record<WebhookKind, Partial<Record<WebhookOutcome, number>>>;
  };
}

function bump(map: Record<string, number>, key: string, by = 1): void {
  map[key] = (map[key] ?? 0) + by;
}

/** Mutable counters behind the snapshot. */
export class MockStats {
  #startedAt: number;
  #now: () => number;
  requests: Record<string, Record<string, number>> = {};
  rateLimited = { total: 0, byRoute: {} as Record<string, number> };
  faults: Record<string, Record<string, number>> = {};
  openaiUsage: Record<string, ModelUsage> = {};
  rateLimitHits = { requests: 0, tokens: 0 };
  batchUsage: Record<string, ModelUsage> = {};
  batches = { created: 0, finished: {} as Record<string, number> };
  llamaparse = { jobsCreated: 0, jobsFinished: {} as Record<string, number>, pagesParsed: 0 };
  webhookAttempts = 0;
  webhookDeliveries: MockStatsSnapshot["webhooks"]["deliveries"] = { genuine: {}, duplicate: {}, forged: {}, replay: {} };

  constructor(now: () => number = Date.now) {
    this.#now = now;
    this.#startedAt = now();
  }

  /** Zeroes every counter and restarts the uptime clock. */
  reset(): void {
    this.#startedAt = this.#now();
    this.requests = {};
    this.rateLimited = { total: 0, byRoute: {} };
    this.faults = {};
    this.openaiUsage = {};
    this.rateLimitHits = { requests: 0, tokens: 0 };
    this.batchUsage = {};
    this.batches = { created: 0, finished: {} };
    this.llamaparse = { jobsCreated: 0, jobsFinished: {}, pagesParsed: 0 };
    this.webhookAttempts = 0;
    this.webhookDeliveries = { genuine: {}, duplicate: {}, forged: {}, replay: {} };
  }

  recordRequest(route: string, status: number | string): void {
    bump((this.requests[route] ??= {}), String(status));
    if (status === 429) {
      this.rateLimited.total++;
      bump(this.rateLimited.byRoute, route);
    }
  }

  recordFault(route: string, fault: number | string): void {
    bump((this.faults[route] ??= {}), String(fault));
  }

  /** Billed usage of one successful request: synchronous, or a line of a batch (`batch: true`). */
  recordUsage(model: string, inputs: number, promptTokens: number, batch = false): void {
    const book = batch ? this.batchUsage : this.openaiUsage;
    const u = (book[model] ??= { requests: 0, inputs: 0, prompt_tokens: 0 });
    u.requests++;
    u.inputs += inputs;
    u.prompt_tokens += promptTokens;
  }

  recordWebhook(kind: WebhookKind, outcome: WebhookOutcome): void {
    const byOutcome = this.webhookDeliveries[kind];
    byOutcome[outcome] = (byOutcome[outcome] ?? 0) + 1;
  }

  /** A JSON-safe copy; `storage` comes from the storage state at the time of the call. */
  snapshot(storage: MockStatsSnapshot["storage"]): MockStatsSnapshot {
    return structuredClone({
      uptimeMs: this.#now() - this.#startedAt,
      requests: this.requests,
      rateLimited: this.rateLimited,
      faults: this.faults,
      openai: { usage: this.openaiUsage, rateLimitHits: this.rateLimitHits, batchUsage: this.batchUsage, batches: this.batches },
      llamaparse: this.llamaparse,
      storage,
      webhooks: { attempts: this.webhookAttempts, deliveries: this.webhookDeliveries },
    });
  }
}
