/**
 * Fault plans: what each mocked service does wrong, and when. A plan is plain JSON (validated
 * by {@link FaultPlanSchema}); it is set when the mocks start or at run time with
 * `POST /__admin/faults`. All draws are seeded (see `rng.ts`): with the same seed and the same
 * requests, the same requests fail, hang or slow down.
 *
 * Decision order for one request: outage (time window since the plan was set) → burst
 * (the n-th to (n+count-1)-th matching request) → error rates (one draw per rule, first hit
 * wins) → none. A latency is drawn for every request, faulted or not.
 */
import { z } from "zod";
import { gaussian, rngFor, type Rng } from "./rng.ts";

const ms = z.number().finite().min(0);
const rate = z.number().min(0).max(1);
/** Route ids a rule applies to (see README); a trailing `*` matches a prefix. Absent = all. */
const routes = z.array(z.string().min(1)).min(1).optional();

function latencyUnion<S extends z.ZodRawShape>(extra: S) {
  return z.discriminatedUnion("dist", [
    z.strictObject({ dist: z.literal("fixed"), ms, ...extra }),
    z
      .strictObject({ dist: z.literal("uniform"), minMs: ms, maxMs: ms, ...extra })
      .refine((v) => (v as { minMs: number; maxMs: number }).minMs <= (v as { maxMs: number }).maxMs, { message: "minMs must be <= maxMs", path: ["maxMs"] }),
    z.strictObject({ dist: z.literal("normal"), meanMs: ms, stddevMs: ms, ...extra }),
    z.strictObject({ dist: z.literal("lognormal"), medianMs: ms, sigma: z.number().finite().min(0), ...extra }),
    z.strictObject({ dist: z.literal("exponential"), meanMs: ms, ...extra }),
  ]);
}

/** A latency distribution in milliseconds: fixed, uniform, normal, lognormal or exponential. */
export const LatencySchema = latencyUnion({});
export type Latency = z.infer<typeof LatencySchema>;

/** A latency distribution limited to some routes. */
const LatencyRuleSchema = latencyUnion({ routes });

const connectionFaults = ["reset", "hang", "malformed"] as const;
/** The answers a service can be made to give (statuses, named errors), plus the connection faults. */
const faultsOf = <const S extends readonly [number | string, ...Array<number | string>]>(...answers: S) =>
  z.union([z.literal(answers), z.enum(connectionFaults)]);
const OpenAIFault = faultsOf(429, 500, 502, 503, 504, "insufficient_quota");
const LlamaParseFault = faultsOf(402, 429, 500, 502, 503, 504);
const StorageFault = faultsOf(429, 500, 502, 503, 504);

function serviceSchema<F extends z.ZodType<string | number>>(fault: F) {
  return {
    /** One distribution for every route, or a list of per-route rules (first match wins). */
    latency: z.union([LatencyRuleSchema, z.array(LatencyRuleSchema)]).optional(),
    /** Each matching request fails with `fault` with probability `rate`. */
    errors: z.array(z.strictObject({ fault, rate, routes })).default([]),
    /** Matching requests number `start` … `start + count - 1` (1-based, since the plan was set) fail. */
    bursts: z
      .array(z.strictObject({ fault, start: z.number().int().min(1), count: z.number().int().min(1), routes }))
      .default([]),
    /** Every matching request between `startMs` and `endMs` after the plan was set fails. */
    outages: z
      .array(
        z
          .strictObject({ fault: fault.default(503 as never), startMs: ms, endMs: ms, routes })
          .refine((o) => o.endMs > o.startMs, { message: "endMs must be > startMs", path: ["endMs"] }),
      )
      .default([]),
    /** How long a `hang` holds the request before the connection is reset (client timeouts usually fire first). */
    hangMs: ms.default(60_000),
  };
}

const RateLimitSchema = z.strictObject({
  rpm: z.number().int().min(1).optional(),
  tpm: z.number().int().min(1).optional(),
});

/** OpenAI faults, plus its RPM/TPM limits (defaults: 10,000 RPM and 10,000,000 TPM per model). */
export const OpenAIFaultsSchema = z.strictObject({
  ...serviceSchema(OpenAIFault),
  rateLimits: RateLimitSchema.extend({ models: z.record(z.string(), RateLimitSchema).optional() }).optional(),
});

/** LlamaParse faults, plus the job schedule (how long jobs stay PENDING and RUNNING). */
export const LlamaParseFaultsSchema = z.strictObject({
  ...serviceSchema(LlamaParseFault),
  schedule: z
    .strictObject({
      pending: LatencySchema.default({ dist: "fixed", ms: 20 }),
      running: LatencySchema.default({ dist: "fixed", ms: 50 }),
      msPerPage: ms.default(0),
    })
    .default({ pending: { dist: "fixed", ms: 20 }, running: { dist: "fixed", ms: 50 }, msPerPage: 0 }),
  /** Probability that a job ends FAILED (besides documents containing `%%POISON%%`). */
  jobFailureRate: rate.default(0),
});

export const StorageFaultsSchema = z.strictObject(serviceSchema(StorageFault));

const events = z.array(z.string().min(1)).min(1).optional();

/** Webhook delivery faults. Each rule may be limited to some event types (`events`). */
export const WebhookFaultsSchema = z.strictObject({
  /** Send the genuine delivery `times` more times (same bytes, same signature). */
  duplicate: z
    .strictObject({ rate, times: z.number().int().min(1).default(1), gapMs: ms.default(0), events })
    .optional(),
  /** Hold the delivery for a drawn delay before the first attempt. */
  delay: z.strictObject({ rate, latency: LatencySchema, events }).optional(),
  /** Hold the delivery until the next delivery has gone out (or `maxHoldMs`), so they arrive swapped. */
  reorder: z.strictObject({ rate, maxHoldMs: ms.default(5_000), events }).optional(),
  /** Never send the delivery (the job must be recovered by polling). */
  drop: z.strictObject({ rate, events }).optional(),
  /** Also send a copy with a wrong (`bad-signature`) or missing (`no-signature`) LC-Signature. */
  forge: z
    .strictObject({
      rate,
      mode: z.enum(["bad-signature", "no-signature"]).default("bad-signature"),
      /** Send only the forged copy, never the genuine one. */
      replaceGenuine: z.boolean().default(false),
      events,
    })
    .optional(),
  /**
   * Re-send a delivery `afterMs` after the genuine one: the identical bytes, or, with
   * `staleSeconds`, a validly signed copy whose `timestamp` is that many seconds old.
   */
  replay: z
    .strictObject({ rate, afterMs: ms.default(1_000), staleSeconds: z.number().min(0).optional(), events })
    .optional(),
});

/** The whole plan. Every section is optional; `{}` means "no faults". */
export const FaultPlanSchema = z.strictObject({
  /** Overrides the server's seed for fault draws. */
  seed: z.number().int().optional(),
  openai: OpenAIFaultsSchema.optional(),
  llamaparse: LlamaParseFaultsSchema.optional(),
  storage: StorageFaultsSchema.optional(),
  webhooks: WebhookFaultsSchema.optional(),
});

/** A validated fault plan (defaults filled in). */
export type FaultPlan = z.output<typeof FaultPlanSchema>;
/** A fault plan as written (JSON). */
export type FaultPlanInput = z.input<typeof FaultPlanSchema>;
export type OpenAIFaults = z.output<typeof OpenAIFaultsSchema>;
export type LlamaParseFaults = z.output<typeof LlamaParseFaultsSchema>;
export type StorageFaults = z.output<typeof StorageFaultsSchema>;
export type WebhookFaults = z.output<typeof WebhookFaultsSchema>;
export type ServiceName = "openai" | "llamaparse" | "storage";
/** What a faulted request does instead of answering normally. */
export type FaultKind = number | "insufficient_quota" | "reset" | "hang" | "malformed";

/** Thrown by {@link parseFaultPlan}; `message` names every bad field. */
export class FaultPlanError extends Error {
  readonly issues: Array<{ path: string; message: string }>;
  constructor(issues: Array<{ path: string; message: string }>) {
    super(`invalid fault plan: ${issues.map((i) => `${i.path}: ${i.message}`).join("; ")}`);
    this.name = "FaultPlanError";
    this.issues = issues;
  }
}

function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out || "(root)";
}

/**
 * Validates a plan, filling in defaults.
 * @throws {FaultPlanError} naming each bad field, e.g. `openai.errors[0].rate: Too big: expected number to be <=1`.
 */
export function parseFaultPlan(input: unknown): FaultPlan {
  const result = FaultPlanSchema.safeParse(input ?? {});
  if (result.success) return result.data;
  throw new FaultPlanError(
    result.error.issues.map((issue) => {
      const path = formatPath(issue.path);
      return { path, message: issue.message };
    }),
  );
}

/** Draws a value (ms) from a latency distribution. */
export function drawLatency(latency: Latency, rng: Rng): number {
  switch (latency.dist) {
    case "fixed":
      return latency.ms;
    case "uniform":
      return latency.minMs + (latency.maxMs - latency.minMs) * rng();
    case "normal":
      return Math.max(0, latency.meanMs + latency.stddevMs * gaussian(rng));
    case "lognormal":
      return latency.medianMs * Math.exp(latency.sigma * gaussian(rng));
    case "exponential":
      return -latency.meanMs * Math.log(1 - rng());
  }
}

/** True when `route` is selected by a rule's `routes` (absent = every route). */
export function routeMatches(route: string, patterns: readonly string[] | undefined): boolean {
  if (!patterns) return true;
  return patterns.some((p) => (p.endsWith("*") ? route.startsWith(p.slice(0, -1)) : p === route));
}

/** The outcome of {@link FaultEngine.decide} for one request. */
export interface FaultDecision {
  /** 1-based count of requests to this route since the plan was set. */
  n: number;
  /** The fault to inject, if any. */
  fault: FaultKind | undefined;
  /** Where the fault came from (`outage`, `burst`, `error`). */
  source: "outage" | "burst" | "error" | undefined;
  /** Extra latency to add before answering (ms). */
  latencyMs: number;
  /** How long a `hang` lasts before the connection is reset (ms). */
  hangMs: number;
  /** A PRNG private to this request, for anything else the handler draws. */
  rng: Rng;
}

type ServiceSection = NonNullable<FaultPlan["openai" | "llamaparse" | "storage"]>;

/**
 * Holds the current plan and the per-route request counters, and decides each request's fault.
 * Counters and the plan clock restart whenever the plan is replaced or the mocks are reset.
 */
export class FaultEngine {
  #plan: FaultPlan;
  #startedAt: number;
  #routeCounters = new Map<string, number>();
  #burstCounters = new Map<string, number>();
  readonly #seed: number;
  readonly #now: () => number;

  constructor(seed: number, plan: FaultPlan, now: () => number = Date.now) {
    this.#seed = seed;
    this.#now = now;
    this.#plan = plan;
    this.#startedAt = now();
  }

  /** The seed in force: the plan's own, else the server's. */
  get seed(): number {
    return this.#plan.seed ?? this.#seed;
  }

  get plan(): FaultPlan {
    return this.#plan;
  }

  /** Milliseconds since the plan was set (the clock outage windows use). */
  elapsedMs(): number {
    return this.#now() - this.#startedAt;
  }

  /** Replaces the plan and restarts its clock and counters. */
  setPlan(plan: FaultPlan): void {
    this.#plan = plan;
    this.restart();
  }

  /** Restarts the plan clock and the request counters, keeping the plan. */
  restart(): void {
    this.#startedAt = this.#now();
    this.#routeCounters.clear();
    this.#burstCounters.clear();
  }

  /** Decides what happens to the next request to `route` of `service`. */
  decide(service: ServiceName, route: string): FaultDecision {
    const n = (this.#routeCounters.get(route) ?? 0) + 1;
    this.#routeCounters.set(route, n);
    const rng = rngFor(this.seed, route, n);
    const section: ServiceSection | undefined = this.#plan[service];
    if (!section) return { n, fault: undefined, source: undefined, latencyMs: 0, hangMs: 60_000, rng };

    let fault: FaultKind | undefined;
    let source: FaultDecision["source"];
    const elapsed = this.elapsedMs();
    for (const outage of section.outages) {
      if (routeMatches(route, outage.routes) && elapsed >= outage.startMs && elapsed < outage.endMs) {
        fault = outage.fault;
        source = "outage";
        break;
      }
    }
    section.bursts.forEach((burst, i) => {
      if (!routeMatches(route, burst.routes)) return;
      const key = `${service}:${i}`;
      const count = (this.#burstCounters.get(key) ?? 0) + 1;
      this.#burstCounters.set(key, count);
      if (fault === undefined && count >= burst.start && count < burst.start + burst.count) {
        fault = burst.fault;
        source = "burst";
      }
    });
    // One draw per error rule whatever happened above, so the stream stays aligned.
    for (const rule of section.errors) {
      const hit = routeMatches(route, rule.routes) && rng() < rule.rate;
      if (hit && fault === undefined) {
        fault = rule.fault;
        source = "error";
      }
    }
    let latencyMs = 0;
    const rules = section.latency === undefined ? [] : Array.isArray(section.latency) ? section.latency : [section.latency];
    const rule = rules.find((r) => routeMatches(route, r.routes));
    if (rule) latencyMs = drawLatency(rule, rng);
    return { n, fault, source, latencyMs, hangMs: section.hangMs, rng };
  }
}
