/**
 * Phases of a run: outages, bursts and error rates stated in the scenario's own terms ("from when
 * the first job is ready to embed, until the outage has refused 9 calls and lasted 24 s") instead
 * of a wall-clock window, so they mean the same on a fast and on a slow machine. The scenario
 * names each phase's start and end; the mocks' rules name the phase they apply in
 * (`"outages": [{"fault": 503, "phase": "openai-down"}]`). The runner watches the run's jobs in
 * PostgreSQL and the faults each phase injected, and switches the phase on and off through the
 * mocks' admin API (`POST /__admin/phases`), which keeps every counter and the fault log.
 */
import type pg from "pg";
import { z } from "zod";
import { PhaseNameSchema } from "../mocks/shared/faults.ts";
import { ALL_STATES, PIPELINE_STATES, type JobStatus } from "../src/state-machine/table.ts";

const count = z.number().int().min(0);

/** How many of the run's jobs are in some states, or have reached a pipeline state (it or a later one). */
const JobsConditionSchema = z
  .strictObject({
    in: z.array(z.enum(ALL_STATES)).min(1).optional(),
    reached: z.enum(PIPELINE_STATES, { message: `must be a pipeline state: ${PIPELINE_STATES.join(", ")}` }).optional(),
    atLeast: count.optional(),
    atMost: count.optional(),
  })
  .superRefine((c, ctx) => {
    if ((c.in === undefined) === (c.reached === undefined))
      ctx.addIssue({ code: "custom", message: 'give either "in" (states a job is in now) or "reached" (a pipeline state a job is in or past)' });
    if ((c.atLeast === undefined) === (c.atMost === undefined))
      ctx.addIssue({ code: "custom", message: 'give either "atLeast" or "atMost" (a number of jobs)' });
  });

const conditionFields = {
  /** Start: milliseconds since the uploads began (the scenario clock). End: since the phase started. */
  afterMs: z.number().int().min(0).optional(),
  /** A count of the run's jobs by state. */
  jobs: JobsConditionSchema.optional(),
};

const StartSchema = z
  .strictObject(conditionFields)
  .refine((c) => c.afterMs !== undefined || c.jobs !== undefined, { message: 'give "afterMs" and/or "jobs" (every condition given must hold)' });

const EndSchema = z
  .strictObject({
    ...conditionFields,
    /** The phase's rules have injected at least this many faults: an outage's effect, whatever the machine's speed. */
    faults: z.number().int().min(1).optional(),
  })
  .refine((c) => c.afterMs !== undefined || c.jobs !== undefined || c.faults !== undefined, {
    message: 'give "afterMs", "faults" and/or "jobs" (the phase ends once every condition given holds)',
  });

/** A phase starts once every condition of `start` holds and ends once every condition of `end` holds. */
export const PhaseSchema = z.strictObject({ start: StartSchema, end: EndSchema });
export const PhasesSchema = z.record(PhaseNameSchema, PhaseSchema);
export type Phase = z.output<typeof PhaseSchema>;
type JobsCondition = z.output<typeof JobsConditionSchema>;

/** Jobs of the run counted by status (the run's database holds only its own jobs). */
export type StatusCounts = Partial<Record<JobStatus, number>>;

/** How many jobs satisfy `c` (before the comparison). */
function jobsMatching(c: JobsCondition, counts: StatusCounts): number {
  const states: readonly JobStatus[] = c.in ?? PIPELINE_STATES.slice(PIPELINE_STATES.indexOf(c.reached!));
  return states.reduce((sum, s) => sum + (counts[s] ?? 0), 0);
}

function jobsHold(c: JobsCondition, counts: StatusCounts): boolean {
  const n = jobsMatching(c, counts);
  return c.atLeast !== undefined ? n >= c.atLeast : n <= c.atMost!;
}

/** What the conditions are measured on at one moment. */
export interface PhaseClock {
  /** Milliseconds since the uploads began. */
  elapsedMs: number;
  counts: StatusCounts;
  /** Faults each phase's rules injected so far (the mocks' `GET /__admin/phases`). */
  faults: Record<string, number>;
}

type PhaseState = { name: string; phase: Phase; startedAt?: number; endedAt?: number };

/** Says what a start condition is, for the live output and for a phase that never started. */
function describeStart(c: Phase["start"]): string {
  const parts: string[] = [];
  if (c.jobs) {
    const what = c.jobs.in ? `in ${c.jobs.in.join("/")}` : `reached ${c.jobs.reached}`;
    parts.push(c.jobs.atLeast !== undefined ? `${c.jobs.atLeast} job(s) ${what}` : `at most ${c.jobs.atMost} job(s) ${what}`);
  }
  if (c.afterMs !== undefined) parts.push(`${c.afterMs} ms since the uploads began`);
  return parts.join(" and ");
}

/**
 * Decides when each phase starts and ends. Pure: `step` takes the clock and returns the switches
 * to make; the driver below does the I/O.
 */
export class PhasePlan {
  readonly #phases: PhaseState[];

  constructor(phases: Record<string, Phase>) {
    this.#phases = Object.entries(phases).map(([name, phase]) => ({ name, phase }));
  }

  get pending(): boolean {
    return this.#phases.some((p) => p.endedAt === undefined);
  }

  /** The phases to switch on (`true`) or off (`false`) now. A phase may start and end in one step. */
  step(clock: PhaseClock): Array<{ name: string; active: boolean; why: string }> {
    const switches: Array<{ name: string; active: boolean; why: string }> = [];
    for (const p of this.#phases) {
      if (p.startedAt === undefined) {
        const { start } = p.phase;
        if ((start.afterMs === undefined || clock.elapsedMs >= start.afterMs) && (!start.jobs || jobsHold(start.jobs, clock.counts))) {
          p.startedAt = clock.elapsedMs;
          switches.push({ name: p.name, active: true, why: describeStart(start) });
        } else continue;
      }
      if (p.endedAt !== undefined) continue;
      const { end } = p.phase;
      const faults = clock.faults[p.name] ?? 0;
      if (
        (end.afterMs === undefined || clock.elapsedMs - p.startedAt >= end.afterMs) &&
        (end.faults === undefined || faults >= end.faults) &&
        (!end.jobs || jobsHold(end.jobs, clock.counts))
      ) {
        p.endedAt = clock.elapsedMs;
        switches.push({ name: p.name, active: false, why: `after ${((p.endedAt - p.startedAt) / 1000).toFixed(1)} s, ${faults} faults injected` });
      }
    }
    return switches;
  }

  /**
   * Phases that did not do what the scenario stated, once the run is quiet: one that never
   * started, or one still on whose `faults` floor was not met (its effect never happened, so a
   * pass would prove nothing about it).
   */
  missed(faults: Record<string, number>): string[] {
    const out: string[] = [];
    for (const p of this.#phases) {
      if (p.startedAt === undefined) out.push(`phase ${p.name} never started (${describeStart(p.phase.start)})`);
      else if (p.endedAt === undefined && p.phase.end.faults !== undefined && (faults[p.name] ?? 0) < p.phase.end.faults)
        out.push(`phase ${p.name} injected only ${faults[p.name] ?? 0} of its ${p.phase.end.faults} faults before the run was quiet`);
    }
    return out;
  }
}

/** The admin API of the mocks, as the driver uses it. */
async function adminCall<T>(adminUrl: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(
    `${adminUrl}/${path}`,
    body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) },
  );
  if (!res.ok) throw new Error(`POST /__admin/${path} answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as T;
}

const STATUS_COUNTS_SQL = "SELECT status, count(*)::int AS n FROM upload_pipeline.upload_jobs GROUP BY status";

/**
 * Watches the run (every `everyMs`) from the start of the uploads and switches phases through the
 * mocks' admin API. Polling is the one inexact part: a phase starts within `everyMs` of its
 * condition (a state a job passes through faster than that can be missed by `in`; `reached`
 * cannot be).
 */
export class PhaseDriver {
  readonly plan: PhasePlan;
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  #lastFaults: Record<string, number> = {};
  readonly #startedAt = Date.now();
  readonly #pool: pg.Pool;
  readonly #adminUrl: string;
  readonly #note: (line: string) => void;

  constructor(phases: Record<string, Phase>, deps: { pool: pg.Pool; adminUrl: string; note: (line: string) => void; everyMs?: number }) {
    this.plan = new PhasePlan(phases);
    this.#pool = deps.pool;
    this.#adminUrl = deps.adminUrl;
    this.#note = deps.note;
    if (this.plan.pending) {
      this.#timer = setInterval(() => void this.tick(), deps.everyMs ?? 100);
      void this.tick();
    }
  }

  private async tick(): Promise<void> {
    if (this.#busy || !this.plan.pending) return;
    this.#busy = true;
    try {
      const { rows } = await this.#pool.query<{ status: JobStatus; n: number }>(STATUS_COUNTS_SQL);
      const { faults } = await adminCall<{ faults: Record<string, number> }>(this.#adminUrl, "phases");
      this.#lastFaults = faults;
      const counts: StatusCounts = Object.fromEntries(rows.map((r) => [r.status, r.n]));
      for (const s of this.plan.step({ elapsedMs: Date.now() - this.#startedAt, counts, faults })) {
        await adminCall(this.#adminUrl, "phases", { phase: s.name, active: s.active });
        this.#note(`phase ${s.name} ${s.active ? "started" : "ended"}: ${s.why}`);
      }
    } catch {
      // PostgreSQL restarting, or the mocks closing at tear-down: the next tick tries again.
    } finally {
      this.#busy = false;
    }
    if (!this.plan.pending) this.stop();
  }

  /** The phases that did not do what the scenario stated (see {@link PhasePlan.missed}). */
  async missed(): Promise<string[]> {
    const faults = await adminCall<{ faults: Record<string, number> }>(this.#adminUrl, "phases").then(
      (p) => p.faults,
      () => this.#lastFaults,
    );
    return this.plan.missed(faults);
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
