/**
 * The scenario runner's results as plain data (JSON-safe: no Maps, Dates or classes), the input
 * of every report writer and the content of `summary.json`.
 */
import type { CoverageReport } from "../coverage.ts";
import type { InvariantReport } from "../invariants/types.ts";
import type { JepsenCounts } from "../jepsen.ts";

/** Completed jobs in one time bucket. */
export interface ThroughputPoint {
  /** Seconds from the run's first event to the end of the bucket. */
  t: number;
  /** Jobs that entered `complete` in the bucket. */
  completed: number;
  /** completed / bucketSeconds. */
  perSecond: number;
}

export interface ThroughputSeries {
  bucketSeconds: number;
  /** ISO time of the first event (t = 0), or null when there were none. */
  startedAt: string | null;
  points: ThroughputPoint[];
}

/** One measured point of the multi-worker scaling run. */
export interface ScalingMeasurement {
  workers: number;
  docsPerSecond: number;
}

export interface ScalingPoint extends ScalingMeasurement {
  /** workers × the single-worker throughput. */
  idealDocsPerSecond: number;
  /** docsPerSecond / idealDocsPerSecond × 100. */
  efficiencyPercent: number;
}

export interface ScalingCurve {
  points: ScalingPoint[];
  /** SPEC §9's bar: efficiency ≥ this percent (90). */
  targetEfficiencyPercent: number;
  /** Fewest workers whose efficiency falls below the target, or null when none does. */
  saturatesAt: number | null;
}

export interface ScenarioFigures {
  documents: number;
  workers: number;
  /** Job slots per worker process. */
  slots?: number;
  durationMs: number;
  /** Terminal documents per second over the scenario's run time. */
  throughputDocsPerSec: number;
  completed?: number;
  failed?: number;
  /** 429 answers from the mocks. */
  rateLimited429: number;
  /** Workers SIGKILLed. */
  kills: number;
  /** Injected faults by kind. */
  faults?: Record<string, number>;
  tokens?: number;
  costUsd?: number;
  /** Rare events the run reached (harness/reachability.ts). */
  reached?: string[];
  /** Lost, duplicated, recovered and unexpected chunks and vectors, and repeated external work (harness/jepsen.ts). */
  jepsen?: JepsenCounts;
}

/** Something the run did or suffered, for the report's time axes. */
export interface TimelineMark {
  kind: "kill" | "restart" | "freeze" | "postgres" | "faults";
  /** When (epoch ms); a band lasts until `untilMs`. */
  atMs: number;
  untilMs?: number;
  /** Short text: which worker, which faults and how many. */
  label: string;
  /** The worker killed, restarted or frozen. */
  worker?: string;
}

/** One span of a document's trace, as the waterfall draws it. */
export interface TraceSpan {
  name: string;
  kind: "server" | "client" | "internal";
  /** Who ran it: `api`, or the worker's id. */
  process: string;
  /** Epoch ms. */
  startMs: number;
  endMs: number;
  /** Nesting under its parent span (0: top). */
  depth?: number;
  attempt?: number;
  /** `error.type` (the stable code, or the HTTP status) when it failed. */
  error?: string;
  /** `http.response.status_code` of a call or request. */
  status?: number;
}

/** A document's trace as the runner collected it (report.html draws it as a waterfall). */
export interface DocumentTrace {
  documentId: string;
  /** The job's final status. */
  status: string;
  traceId: string;
  spans: TraceSpan[];
}

export interface ScenarioResult {
  name: string;
  /** The seed the scenario ran with (its own, or `--seed`). */
  seed?: number;
  description?: string;
  passed: boolean;
  /** Why it failed apart from invariants: the quiescence deadline, stuck jobs, a crash of the runner. */
  errors: string[];
  figures: ScenarioFigures;
  invariants: InvariantReport | null;
  coverage: CoverageReport | null;
  throughput: ThroughputSeries | null;
  /** Kills, restarts, freezes, PostgreSQL restarts and fault bursts, in time order. */
  timeline?: TimelineMark[];
  /** The traces of a few documents (those continued after a kill first), for the waterfalls. */
  traces?: DocumentTrace[];
  /** Only for the scaling scenario. */
  scaling?: ScalingCurve;
  /** The fault-log and database digests a replay must reproduce (see harness/replay.ts). */
  replay?: { faultLogDigest: string; faults: number; databaseDigest: string };
  /** The scenario exactly as run (seed and overrides applied): what `--replay` runs again. */
  definition?: unknown;
  /** The command that replays this scenario. */
  replayCommand?: string;
}

export interface RunSummary {
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  seed: number | string;
  passed: boolean;
  /** `--require-coverage`, or null when not given. */
  requiredCoverage: number | null;
  /** Coverage of the whole suite (`mergeCoverage` of the scenarios). */
  coverage: CoverageReport | null;
  scenarios: ScenarioResult[];
  /** The scaling curve, when the suite measured one. */
  scaling: ScalingCurve | null;
  environment?: { node: string; platform: string; cpus: number };
}
