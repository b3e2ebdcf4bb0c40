/**
 * Fault plans: what each mocked service does wrong, and when. A plan is plain JSON (validated
 * by {@link FaultPlanSchema}); it is set when the mocks start or at run time with
 * `POST /__admin/faults`. All draws are seeded (see `rng.ts`): with the same seed and the same
 * requests, the same requests fail, hang or slow down.
 *
 * Every decision is keyed by what the request *is*, not when it came: its route, a fingerprint
 * of its content (the embeddings' inputs, the parsed file's hash, the Storage object path) and
 * its occurrence (how many times that same request has been seen). So with several worker
 * processes the same request gets the same answer whatever the scheduling, and a seed replays
 * a run. Two things stay tied to timing and are documented as such: outage windows (measured
 * on the plan clock, which the scenario runner starts when its uploads begin, or a named
 * **phase** the runner switches on and off through the admin API when the run reaches a state
 * of its own, such as "the first job is ready to embed") and bursts counted `of: "route"` (the
 * n-th arrival on a route).
 *
 * Decision order for one request: outage → burst → error rates (one draw per rule, first hit
 * wins) → none. A latency is drawn for every request, faulted or not. Every injected fault is
 * appended to the fault log (route, fingerprint, occurrence, fault, source).
 */
import { z } from "zod";
import { gaussian, rngFor, type Rng } from "./rng.ts";

const ms = z.number().finite().min(0);
const rate = z.number().min(0).max(1);
/** Route ids a rule applies to (see README); a trailing `*` matches a prefix. Absent = all. */
const routes = z.array(z.string().min(1)).min(1).optional();
/** A phase of the run (named by the scenario, switched by the runner): the rule applies only while it is on. */
export const PhaseNameSchema = z.string().regex(/^[a-z0-9][a-z0-9-]*$/, "a phase name: lower-case letters, digits and dashes");
const phase = PhaseNameSchema.optional();

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
  z.union([z.literal(answers), z.enum(connectionFaults)], {
    error: `must be one of ${[...answers, ...connectionFaults].map((a) => JSON.stringify(a)).join(", ")}`,
  });
const OpenAIFault = faultsOf(429, 500, 502, 503, 504, "insufficient_quota");
const LlamaParseFault = faultsOf(402, 429, 500, 502, 503, 504);
const StorageFault = faultsOf(429, 500, 502, 503, 504);

function serviceSchema<F extends z.ZodType<string | number>>(fault: F) {
  return {
    /** One distribution for every route, or a list of per-route rules (first match wins). */
    latency: z.union([LatencyRuleSchema, z.array(LatencyRuleSchema)]).optional(),
    /** Each matching request fails with `fault` with probability `rate` (only while `phase` is on, when given). */
    errors: z.array(z.strictObject({ fault, rate, routes, phase })).default([]),
    /**
     * `of: "request"` (default): occurrences `start` … `start + count - 1` of each matching request
     * fail (the same request, by fingerprint: "the first two tries of every request get a 429"),
     * for the seeded fraction `rate` of requests (default all). `of: "route"`: the matching
     * requests number `start` … `start + count - 1` in arrival order since the plan was set fail,
     * which depends on scheduling when several processes call the mock.
     */
    bursts: z
      .array(
        z.strictObject({
          fault,
          start: z.number().int().min(1),
          count: z.number().int().min(1),
          of: z
            .enum(["request", "route"], { message: 'must be "request" (occurrences of the same request) or "route" (arrival order on the route)' })
            .default("request"),
          rate: rate.default(1),
          routes,
          phase,
        }),
      )
      .default([]),
    /**
     * Every matching request fails: between `startMs` and `endMs` on the plan clock (started when
     * the plan is set, or by the scenario runner when its uploads begin), or while `phase` is on.
     */
    outages: z
      .array(
        z.strictObject({ fault: fault.default(503 as never), startMs: ms.optional(), endMs: ms.optional(), phase, routes }).superRefine((o, ctx) => {
          const window = o.startMs !== undefined || o.endMs !== undefined;
          if (window === (o.phase !== undefined))
            ctx.addIssue({
              code: "custom",
              message: 'give either "startMs" and "endMs" (a window on the plan clock) or "phase" (while a phase of the run is on)',
            });
          else if (window && (o.startMs === undefined || o.endMs === undefined))
            ctx.addIssue({ code: "custom", path: [o.startMs === undefined ? "startMs" : "endMs"], message: "startMs and endMs go together" });
          else if (window && o.endMs! <= o.startMs!) ctx.addIssue({ code: "custom", path: ["endMs"], message: "endMs must be > startMs" });
        }),
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

const BATCH_SCHEDULE_DEFAULT = { validatingMs: 50, inProgressMs: 200, finalizingMs: 50 };

/**
 * The Batch API's schedule and fates. A batch's fate is drawn once, keyed by its input file's
 * SHA-256 and how many batches that content already had (never by its id or arrival order).
 */
export const OpenAIBatchesSchema = z.strictObject({
  /** How long a batch stays `validating`, `in_progress` and `finalizing`. */
  schedule: z.strictObject({ validatingMs: ms.default(50), inProgressMs: ms.default(200), finalizingMs: ms.default(50) }).default(BATCH_SCHEDULE_DEFAULT),
  /** The batch ends `expired` after `in_progress`: the fraction `completedFraction` of its requests made it into the output file, the rest are `batch_expired` lines of the error file. */
  expire: z.strictObject({ rate, completedFraction: rate.default(0) }).optional(),
  /** The batch completes, but the fraction `requests` of its request lines (at least one) fail with a 500 in the error file. */
  partialFailure: z.strictObject({ rate, requests: rate.default(0.1) }).optional(),
  /** The batch stays `in_progress` `extraMs` longer. */
  slow: z.strictObject({ rate, extraMs: ms }).optional(),
  /**
   * OpenAI fails the whole batch after `validating` though its input is valid, as when the
   * organization's enqueued-token limit is reached: `errors.data` holds one `token_limit_exceeded`
   * (line and param null), no output or error file.
   */
  failed: z.strictObject({ rate }).optional(),
  /** The output file also carries a line answering a request that was not in this batch's input (another batch's, when the mock holds one). */
  foreignLine: z.strictObject({ rate }).optional(),
  /** The output file has one of its lines twice in a row (same `custom_id`, same answer). */
  duplicateLine: z.strictObject({ rate }).optional(),
  /** One line of the output file carries only the first `dimensions` values of its embedding (fewer than the request asked for). */
  wrongDimensions: z.strictObject({ rate, dimensions: z.number().int().min(1).default(8) }).optional(),
});

/** OpenAI faults, plus its RPM/TPM limits (defaults: 10,000 RPM and 10,000,000 TPM per model) and the Batch API's schedule and fates. */
export const OpenAIFaultsSchema = z.strictObject({
  ...serviceSchema(OpenAIFault),
  rateLimits: RateLimitSchema.extend({ models: z.record(z.string(), RateLimitSchema).optional() }).optional(),
  batches: OpenAIBatchesSchema.optional(),
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
  /**
   * Probability that a job completes with `pages` of its pages failed (`success: false`,
   * drawn per job) and emits `parse.partial_success` instead of `parse.success`.
   */
  partialResults: z.strictObject({ rate, pages: z.number().int().min(1).default(1) }).optional(),
});

export const StorageFaultsSchema = z.strictObject(serviceSchema(StorageFault));

const events = z.array(z.string().min(1)).min(1).optional();

/** Webhook delivery faults. Each rule may be limited to some event types (`events`). */
export const WebhookFaultsSchema = z.strictObject({
  /** Send the genuine delivery `times` more times (same bytes, same signature). */
  duplicate: z.strictObject({ rate, times: z.number().int().min(1).default(1), gapMs: ms.default(0), events }).optional(),
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
   * `staleSeconds`, a validly signed copy whose `timestamp` is that many seconds old, or, with
   * `resign`, one re-signed with the time of the re-send (what LlamaParse sends when it retries
   * a delivery whose answer it did not see).
   */
  replay: z
    .strictObject({ rate, afterMs: ms.default(1_000), staleSeconds: z.number().min(0).optional(), resign: z.boolean().default(false), events })
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
export type OpenAIBatchFaults = z.output<typeof OpenAIBatchesSchema>;
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

/** One injected fault, as the fault log records it: what the request was and what it got. */
export interface FaultLogEntry {
  service: ServiceName | "webhooks";
  route: string;
  /** What the request is (see {@link FaultEngine.decide}). */
  fingerprint: string;
  /** 1-based: how many times this same request (route + fingerprint) has been seen. */
  occurrence: number;
  fault: FaultKind | string;
  source: "outage" | "burst" | "error" | "webhook";
}

/**
 * The fault log as sorted lines: arrival order depends on scheduling, the set of decisions must
 * not. Two runs with the same seed must give the same lines.
 */
export function faultLogLines(log: readonly FaultLogEntry[]): string[] {
  return log.map((e) => `${e.service} ${e.route} ${e.fingerprint} #${e.occurrence} → ${e.fault} (${e.source})`).sort();
}

/** The outcome of {@link FaultEngine.decide} for one request. */
export interface FaultDecision {
  /** 1-based count of requests to this route since the plan was set (arrival order). */
  n: number;
  /** 1-based count of this same request (route + fingerprint) since the plan was set. */
  occurrence: number;
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
 * Holds the current plan, the per-route and per-request counters and the fault log, and decides
 * each request's fault. Counters, the log and the plan clock restart whenever the plan is
 * replaced or the mocks are reset.
 */
export class FaultEngine {
  #plan: FaultPlan;
  #startedAt: number;
  #routeCounters = new Map<string, number>();
  #occurrences = new Map<string, number>();
  #burstCounters = new Map<string, number>();
  #log: FaultLogEntry[] = [];
  /** Phases the runner has switched on, and the faults each phase's rules injected so far. */
  #activePhases = new Set<string>();
  #phaseFaults = new Map<string, number>();
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

  /** Every fault injected since the plan was set, in the order they were decided. */
  get log(): readonly FaultLogEntry[] {
    return this.#log;
  }

  /** Milliseconds since the plan clock started (the clock outage windows use). */
  elapsedMs(): number {
    return this.#now() - this.#startedAt;
  }

  /** Replaces the plan and restarts its clock, counters and log. */
  setPlan(plan: FaultPlan): void {
    this.#plan = plan;
    this.restart();
  }

  /** Restarts the plan clock, the request counters, the phases and the log, keeping the plan. */
  restart(): void {
    this.startClock();
    this.#routeCounters.clear();
    this.#occurrences.clear();
    this.#burstCounters.clear();
    this.#activePhases.clear();
    this.#phaseFaults.clear();
    this.#log = [];
  }

  /** Every phase the plan's rules name. */
  #phaseNames(): string[] {
    const names = new Set<string>();
    for (const service of ["openai", "llamaparse", "storage"] as const) {
      const section = this.#plan[service];
      for (const rule of [...(section?.errors ?? []), ...(section?.bursts ?? []), ...(section?.outages ?? [])]) if (rule.phase) names.add(rule.phase);
    }
    return [...names].sort();
  }

  /**
   * Switches a phase on or off, keeping counters and log (a phase is part of one run, unlike a
   * new plan).
   * @throws {FaultPlanError} when no rule of the plan in force names the phase
   */
  setPhase(name: string, on: boolean): void {
    const known = this.#phaseNames();
    if (!known.includes(name))
      throw new FaultPlanError([{ path: "phase", message: `no rule of the plan in force names phase "${name}"; its phases: ${known.join(", ") || "none"}` }]);
    if (on) this.#activePhases.add(name);
    else this.#activePhases.delete(name);
  }

  /** The phases that are on, and how many faults each phase's rules have injected. */
  phases(): { active: string[]; faults: Record<string, number> } {
    return { active: [...this.#activePhases].sort(), faults: Object.fromEntries(this.#phaseFaults) };
  }

  /** Starts the plan clock now (outage windows count from here), keeping counters and log. */
  startClock(): void {
    this.#startedAt = this.#now();
  }

  /** Appends a fault decided elsewhere (webhook deliveries) to the log. */
  record(entry: FaultLogEntry): void {
    this.#log.push(entry);
  }

  /**
   * Decides what happens to a request to `route` of `service`. `fingerprint` says what the
   * request is (same content, same fingerprint); its draws come from a PRNG keyed by the seed,
   * the route, the fingerprint and the occurrence, so they do not depend on arrival order.
   */
  decide(service: ServiceName, route: string, fingerprint = ""): FaultDecision {
    const n = (this.#routeCounters.get(route) ?? 0) + 1;
    this.#routeCounters.set(route, n);
    const requestKey = `${route}\u0000${fingerprint}`;
    const occurrence = (this.#occurrences.get(requestKey) ?? 0) + 1;
    this.#occurrences.set(requestKey, occurrence);
    const rng = rngFor(this.seed, route, fingerprint, occurrence);
    const section: ServiceSection | undefined = this.#plan[service];
    if (!section) return { n, occurrence, fault: undefined, source: undefined, latencyMs: 0, hangMs: 60_000, rng };

    let fault: FaultKind | undefined;
    let source: FaultDecision["source"];
    let phase: string | undefined;
    const elapsed = this.elapsedMs();
    const on = (rule: { phase?: string | undefined }) => rule.phase === undefined || this.#activePhases.has(rule.phase);
    for (const outage of section.outages) {
      const inWindow = outage.phase !== undefined ? on(outage) : elapsed >= outage.startMs! && elapsed < outage.endMs!;
      if (routeMatches(route, outage.routes) && inWindow) {
        fault = outage.fault;
        source = "outage";
        phase = outage.phase;
        break;
      }
    }
    section.bursts.forEach((burst, i) => {
      if (!routeMatches(route, burst.routes) || !on(burst)) return;
      let count = occurrence;
      if (burst.of === "route") {
        const key = `${service}:${i}`;
        count = (this.#burstCounters.get(key) ?? 0) + 1;
        this.#burstCounters.set(key, count);
      }
      // Which requests a partial burst picks is a draw of its own, per request, not per try.
      const picked = burst.rate >= 1 || rngFor(this.seed, "burst", i, route, fingerprint)() < burst.rate;
      if (fault === undefined && picked && count >= burst.start && count < burst.start + burst.count) {
        fault = burst.fault;
        source = "burst";
        phase = burst.phase;
      }
    });
    // One draw per error rule whatever happened above, so the stream stays aligned.
    for (const rule of section.errors) {
      const hit = routeMatches(route, rule.routes) && rng() < rule.rate && on(rule);
      if (hit && fault === undefined) {
        fault = rule.fault;
        source = "error";
        phase = rule.phase;
      }
    }
    if (phase !== undefined) this.#phaseFaults.set(phase, (this.#phaseFaults.get(phase) ?? 0) + 1);
    let latencyMs = 0;
    const rules = section.latency === undefined ? [] : Array.isArray(section.latency) ? section.latency : [section.latency];
    const rule = rules.find((r) => routeMatches(route, r.routes));
    if (rule) latencyMs = drawLatency(rule, rng);
    if (fault !== undefined && source !== undefined) this.#log.push({ service, route, fingerprint, occurrence, fault, source });
    return { n, occurrence, fault, source, latencyMs, hangMs: section.hangMs, rng };
  }
}
