/**
 * Throughput over time from `job_events`: jobs entering `complete` per bucket, counted from the
 * run's first event. `at` is `clock_timestamp()` (SPEC §3), so it is the commit-time clock of
 * each transition, not its transaction's start.
 */
import type pg from "pg";
import type { ScalingCurve, ScalingMeasurement, ThroughputSeries } from "./types.ts";

/**
 * Bucket `completedAt` (ms) into `bucketSeconds` buckets from `startMs` up to the last one
 * (or `endMs`). Empty buckets are kept, so the line drops to zero during an outage.
 */
export function seriesFromTimestamps(startMs: number, completedAt: readonly number[], bucketSeconds = 1, endMs?: number): ThroughputSeries {
  if (!(bucketSeconds > 0)) throw new Error(`bucketSeconds must be positive, got ${bucketSeconds}`);
  const bucketMs = bucketSeconds * 1000;
  const last = Math.max(endMs ?? startMs, ...completedAt);
  const n = completedAt.length === 0 && endMs === undefined ? 0 : Math.max(1, Math.ceil((last - startMs) / bucketMs));
  const counts = new Array<number>(n).fill(0);
  for (const at of completedAt) counts[Math.min(n - 1, Math.max(0, Math.floor((at - startMs) / bucketMs)))]! += 1;
  return {
    bucketSeconds,
    startedAt: new Date(startMs).toISOString(),
    points: counts.map((completed, i) => ({ t: (i + 1) * bucketSeconds, completed, perSecond: completed / bucketSeconds })),
  };
}

/** The throughput series of the run in `db` (all of its jobs). */
export async function throughputSeries(db: Pick<pg.Pool, "query">, bucketSeconds = 1): Promise<ThroughputSeries> {
  const { rows } = await db.query<{ start_ms: number | null; done_ms: number[] | null }>(
    `SELECT (SELECT extract(epoch FROM min(at)) * 1000 FROM upload_pipeline.job_events)::float8 AS start_ms,
            (SELECT array_agg(extract(epoch FROM at) * 1000 ORDER BY at)::float8[]
               FROM upload_pipeline.job_events WHERE to_status = 'complete') AS done_ms`,
  );
  const start = rows[0]?.start_ms;
  if (start === null || start === undefined) return { bucketSeconds, startedAt: null, points: [] };
  return seriesFromTimestamps(start, rows[0]?.done_ms ?? [], bucketSeconds);
}

/**
 * The scaling curve: each measurement against the linear ideal (workers × the 1-worker rate;
 * with no 1-worker point, the smallest run's rate per worker). SPEC §9 asks for ≥ 90 %.
 */
export function scalingCurve(measurements: readonly ScalingMeasurement[], targetEfficiencyPercent = 90): ScalingCurve {
  const sorted = [...measurements].sort((a, b) => a.workers - b.workers);
  const base = sorted[0];
  const perWorker = base ? base.docsPerSecond / base.workers : 0;
  const points = sorted.map((m) => {
    const ideal = perWorker * m.workers;
    return { ...m, idealDocsPerSecond: ideal, efficiencyPercent: ideal > 0 ? (m.docsPerSecond / ideal) * 100 : 0 };
  });
  return { points, targetEfficiencyPercent, saturatesAt: points.find((p) => p.efficiencyPercent < targetEfficiencyPercent)?.workers ?? null };
}
