/**
 * Hands V8's pooled heap pages back to the system after a long stage.
 *
 * When a full collection shrinks the heap, V8 (13.6, Node 24) keeps the freed 256 KiB pages in
 * a pool for reuse, still resident, and releases the pool only in a memory-reducing collection,
 * which it schedules on its own only once the process looks idle. A busy worker never does, so
 * one stage's transient peak stayed in its RSS for the rest of the process's life: chunking a
 * 10 MiB document briefly grew the heap to ~95 MiB, and the 30-40 MiB it then freed sat in the
 * pool through the 40 s of embedding that followed (`--trace-gc` prints it as `pooled: 39 MB`
 * after every collection; steady RSS 179-194 MiB against 124 MiB idle). A memory-reducing
 * collection right after that stage left 7 MiB pooled for the rest of the job.
 *
 * `gc({ flavor: "last-resort" })` (V8's GC extension, present under `--expose-gc`) is the only
 * memory-reducing collection a program can ask for: a plain `gc()` collects as much but pools
 * the freed pages too. It took 46-55 ms (two full collections of a ~35 MiB heap), so it runs
 * only after a stage of at least a second and at most once per interval: the cost stays under
 * a few per cent of one core whatever the number of slots. Without `--expose-gc` (a worker not
 * started by `npm run worker`, which says so at start-up) it does nothing.
 */
import type { Clock } from "../resilience/clock.ts";

export interface HeapTrimOptions {
  /** The collector (default: `globalThis.gc`, set by `--expose-gc`); absent → trimming is off. */
  gc?: NodeJS.GCFunction | undefined;
  clock?: Pick<Clock, "now">;
  /** Stages shorter than this allocate too little to leave a pool worth a collection. */
  minStageMs?: number;
  /** At most one trim per this interval, across every slot of the process. */
  minIntervalMs?: number;
}

export interface HeapTrimmer {
  /** Called after each stage; trims when the stage was long and the last trim is old enough. Returns the trim's milliseconds, or undefined. */
  afterStage(durationMs: number): number | undefined;
}

export function heapTrimmer(options: HeapTrimOptions = {}): HeapTrimmer {
  const { gc = globalThis.gc, clock = Date, minStageMs = 1_000, minIntervalMs = 30_000 } = options;
  let lastTrimAt = -Infinity;
  return {
    afterStage(durationMs) {
      if (!gc || durationMs < minStageMs || clock.now() - lastTrimAt < minIntervalMs) return undefined;
      const started = performance.now();
      gc({ type: "major", execution: "sync", flavor: "last-resort" });
      lastTrimAt = clock.now();
      return Math.round(performance.now() - started);
    },
  };
}
