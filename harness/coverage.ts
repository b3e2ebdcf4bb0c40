/**
 * State-machine coverage (SPEC §8.6): which edges of the table in `src/state-machine/table.ts`
 * the run's `job_events` exercised, by which actors, and which it never did.
 *
 * The create edge (∅ → uploaded) is excluded from the percentage by default: every job takes it,
 * so counting it would only inflate the figure. Pass `includeCreate: true` to count it.
 * Coverage is over edges, not (edge, actor) pairs; `actorPairs` reports the finer figure (the
 * webhook and the reconciler both take parse_queued → parsed, for example).
 */
import type pg from "pg";
import { EDGES, findEdge, isJobStatus, type Edge, type JobStatus } from "../src/state-machine/table.ts";

export type EdgeKind = Edge["kind"];

/** One edge of the table and how often the run took it. Plain data. */
export interface EdgeCoverage {
  from: JobStatus | null;
  to: JobStatus;
  kind: EdgeKind;
  /** Actors the table allows. */
  actors: string[];
  /** Events that took this edge. */
  count: number;
  /** Events by the actor recorded in `detail.actor`. */
  byActor: Record<string, number>;
}

export interface KindCoverage {
  total: number;
  exercised: number;
  percent: number;
  /** `from → to` of each edge of this kind never taken. */
  unexercised: string[];
}

export interface CoverageReport {
  /** Whether ∅ → uploaded counts toward `totalEdges`/`percent`. */
  includesCreateEdge: boolean;
  totalEdges: number;
  exercisedEdges: number;
  /** exercisedEdges / totalEdges × 100, unrounded. */
  percent: number;
  /** Every edge of the table (the create edge too, whatever `includesCreateEdge` says). */
  edges: EdgeCoverage[];
  /** `from → to` of each counted edge never taken. */
  unexercised: string[];
  byKind: Record<Exclude<EdgeKind, "create">, KindCoverage> & { create?: KindCoverage };
  /** (edge, allowed actor) pairs: how many the table has and how many the run took. */
  actorPairs: { total: number; exercised: number };
  /** Events whose (from, to) is not an edge of the table: also an invariant violation (event_paths_valid). */
  illegal: Array<{ from: string | null; to: string; count: number }>;
}

/** An event as coverage needs it. */
export interface CoverageEvent {
  from_status: string | null;
  to_status: string;
  actor: string | null;
  /** Events with the same (from, to, actor); defaults to 1. */
  count?: number;
}

export interface CoverageOptions {
  /** Count ∅ → uploaded toward the percentage (default false). */
  includeCreate?: boolean;
}

export const edgeLabel = (e: { from: string | null; to: string }): string => `${e.from ?? "∅"} → ${e.to}`;

/** Coverage of `events` against the state machine table. */
export function computeCoverage(events: Iterable<CoverageEvent>, opts: CoverageOptions = {}): CoverageReport {
  const edges: EdgeCoverage[] = EDGES.map((e) => ({ from: e.from, to: e.to, kind: e.kind, actors: [...e.actors], count: 0, byActor: {} }));
  const index = new Map(edges.map((e) => [edgeLabel(e), e]));
  const illegal = new Map<string, { from: string | null; to: string; count: number }>();
  for (const ev of events) {
    const n = ev.count ?? 1;
    const from = ev.from_status;
    const known = (from === null || isJobStatus(from)) && isJobStatus(ev.to_status) && findEdge(from as JobStatus | null, ev.to_status);
    const edge = known ? index.get(edgeLabel({ from, to: ev.to_status })) : undefined;
    if (!edge) {
      const key = edgeLabel({ from, to: ev.to_status });
      const entry = illegal.get(key) ?? { from, to: ev.to_status, count: 0 };
      entry.count += n;
      illegal.set(key, entry);
      continue;
    }
    edge.count += n;
    const actor = ev.actor ?? "unknown";
    edge.byActor[actor] = (edge.byActor[actor] ?? 0) + n;
  }
  return summarize(edges, [...illegal.values()], opts.includeCreate ?? false);
}

function summarize(edges: EdgeCoverage[], illegal: CoverageReport["illegal"], includeCreate: boolean): CoverageReport {
  const counted = edges.filter((e) => includeCreate || e.kind !== "create");
  const kinds = (includeCreate ? ["create", "forward", "failure", "retry"] : ["forward", "failure", "retry"]) as EdgeKind[];
  const byKind = Object.fromEntries(
    kinds.map((kind) => {
      const of = edges.filter((e) => e.kind === kind);
      const exercised = of.filter((e) => e.count > 0).length;
      return [kind, { total: of.length, exercised, percent: pct(exercised, of.length), unexercised: of.filter((e) => e.count === 0).map(edgeLabel) }];
    }),
  ) as CoverageReport["byKind"];
  const exercisedEdges = counted.filter((e) => e.count > 0).length;
  const pairs = counted.flatMap((e) => e.actors.map((a) => (e.byActor[a] ?? 0) > 0));
  return {
    includesCreateEdge: includeCreate,
    totalEdges: counted.length,
    exercisedEdges,
    percent: pct(exercisedEdges, counted.length),
    edges,
    unexercised: counted.filter((e) => e.count === 0).map(edgeLabel),
    byKind,
    actorPairs: { total: pairs.length, exercised: pairs.filter(Boolean).length },
    illegal,
  };
}

const pct = (n: number, of: number): number => (of === 0 ? 100 : (n / of) * 100);

/** Coverage of the run in `db` (every job's events). */
export async function collectCoverage(db: Pick<pg.Pool, "query">, opts: CoverageOptions = {}): Promise<CoverageReport> {
  const { rows } = await db.query<{ from_status: string | null; to_status: string; actor: string | null; count: number }>(
    `SELECT from_status, to_status, detail->>'actor' AS actor, count(*)::int AS count
       FROM upload_pipeline.job_events GROUP BY 1, 2, 3`,
  );
  return computeCoverage(rows, opts);
}

/**
 * Coverage of a whole suite: the edge counts of several scenarios added up. The suite's
 * `--require-coverage` is applied to this, since no single scenario takes every failure edge.
 */
export function mergeCoverage(reports: readonly CoverageReport[], opts: CoverageOptions = {}): CoverageReport {
  const events: CoverageEvent[] = [];
  for (const r of reports) {
    for (const e of r.edges) for (const [actor, count] of Object.entries(e.byActor)) events.push({ from_status: e.from, to_status: e.to, actor, count });
    for (const i of r.illegal) events.push({ from_status: i.from, to_status: i.to, actor: null, count: i.count });
  }
  return computeCoverage(events, { includeCreate: opts.includeCreate ?? reports[0]?.includesCreateEdge ?? false });
}

/** The percentage `--require-coverage <percent>` is compared with (`percent >= required` passes). */
export function coveragePercent(report: CoverageReport): number {
  return report.percent;
}

/** Whether `report` meets `required` percent (tolerant of float noise: 26/27 × 100 stays below 100). */
export function meetsCoverage(report: CoverageReport, required: number): boolean {
  return report.percent + 1e-9 >= required;
}
