/**
 * What every benchmark shares: the result format, a database per run (cloned from one migrated
 * template, as the tests do), CPU accounting for "where does it saturate", and a few helpers.
 *
 * Benchmarks report figures; they never fail a run because a machine is slow. A figure may
 * carry a target (SPEC §9) and whether this run met it; `main.ts` prints and stores both.
 */
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { withDatabase } from "../src/db/provision.ts";

/** A target from SPEC §9: `value op bound`. */
export interface Target {
  op: ">=" | "<" | "<=" | ">";
  bound: number;
}

/** One reported number. */
export interface Figure {
  /** Stable key for bench.json (`tpm_ratio`). */
  key: string;
  /** What it is, for the table. */
  label: string;
  value: number;
  /** `ratio`, `%`, `transitions/s`, `MiB`, `ms`, … */
  unit: string;
  target?: Target | undefined;
  /** Set when there is a target. */
  met?: boolean | undefined;
}

export interface BenchResult {
  name: BenchName;
  title: string;
  figures: Figure[];
  /** Sentences for the reader: where it saturates, caveats, what was configured. */
  notes: string[];
  /** Raw numbers behind the figures (runs, timelines), for bench.json only. */
  details: Record<string, unknown>;
  durationMs: number;
}

export const BENCH_NAMES = ["queue", "ratelimit", "memory", "webhook", "startup", "cpu", "peers", "fleet", "claim"] as const;
export type BenchName = (typeof BENCH_NAMES)[number];

export interface BenchContext {
  /** Shorter runs (a smoke test of the benchmarks themselves, not figures to quote). */
  quick: boolean;
  /** Connection string of the server's `postgres` database. */
  serverUrl: string;
  /** A migrated database to clone from. */
  templateDb: string;
  /** Progress line on stderr. */
  log(line: string): void;
}

export function figure(key: string, label: string, value: number, unit: string, target?: Target): Figure {
  return { key, label, value, unit, ...(target ? { target, met: meets(value, target) } : {}) };
}

export function meets(value: number, t: Target): boolean {
  switch (t.op) {
    case ">=":
      return value >= t.bound;
    case ">":
      return value > t.bound;
    case "<=":
      return value <= t.bound;
    case "<":
      return value < t.bound;
  }
}

// ---------------------------------------------------------------------------------------------
// Databases

export interface BenchDatabase {
  name: string;
  url: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

export async function adminQuery<T extends pg.QueryResultRow = pg.QueryResultRow>(serverUrl: string, sql: string): Promise<pg.QueryResult<T>> {
  const client = new pg.Client(serverUrl);
  await client.connect();
  try {
    return await client.query<T>(sql);
  } finally {
    await client.end();
  }
}

/** A fresh database cloned from the migrated template; `drop()` forces it away. */
export async function createDatabase(ctx: BenchContext, prefix: string, poolSize = 10): Promise<BenchDatabase> {
  const name = `bench_${prefix}_${randomBytes(3).toString("hex")}`;
  await adminQuery(ctx.serverUrl, `CREATE DATABASE ${name} TEMPLATE ${ctx.templateDb}`);
  const url = withDatabase(ctx.serverUrl, name);
  const pool = new pg.Pool({ connectionString: url, max: poolSize });
  pool.on("error", () => {}); // drop() forces connections away
  return {
    name,
    url,
    pool,
    async drop() {
      await pool.end().catch(() => {});
      await adminQuery(ctx.serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
    },
  };
}

// ---------------------------------------------------------------------------------------------
// CPU accounting (Linux /proc; every reader returns undefined elsewhere)

const TICKS_PER_SECOND = 100; // USER_HZ on every Linux this runs on

/** utime + stime of one process, in seconds. */
export function processCpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** The PostgreSQL server's processes: the postmaster (from `postmaster.pid`) and its children. */
export async function postgresPids(pool: pg.Pool): Promise<number[]> {
  try {
    const { rows } = await pool.query<{ setting: string }>("SELECT setting FROM pg_settings WHERE name = 'data_directory'");
    const dir = rows[0]?.setting;
    if (!dir) return [];
    const postmaster = Number(readFileSync(join(dir, "postmaster.pid"), "utf8").split("\n")[0]);
    const children = readdirSync("/proc")
      .filter((d) => /^\d+$/.test(d))
      .map(Number)
      .filter((pid) => {
        try {
          const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
          return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === postmaster;
        } catch {
          return false;
        }
      });
    return [postmaster, ...children];
  } catch {
    // Not a local server (DATABASE_URL elsewhere) or not Linux: no Postgres CPU figure.
    return [];
  }
}

/** Busy and total jiffies of the whole machine (`/proc/stat`'s first line). */
function machineTicks(): { busy: number; total: number } | undefined {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!;
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    const total = v.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

export interface CpuWindow {
  /** Seconds of wall time. */
  wallSeconds: number;
  /** CPU of this Node process, in cores (1.0 = one core busy all the time). */
  benchProcessCores: number;
  /** CPU of the listed child processes (a worker, the API), in cores. */
  childCores: number | undefined;
  /** CPU of the PostgreSQL server processes, in cores (undefined when not local). */
  postgresCores: number | undefined;
  /** The whole machine's busy fraction (0..1), every process included. */
  machineBusy: number | undefined;
  /** Cores used by processes outside this benchmark (other jobs on a shared machine). */
  otherCores: number | undefined;
}

/**
 * Start measuring CPU over a window; `stop()` returns the averages. Postgres backends that start
 * during the window are not counted (the pools are opened before the window starts).
 */
export async function cpuWindow(pool: pg.Pool | undefined, childPids: number[] = []): Promise<{ stop(): CpuWindow }> {
  const pgPids = pool ? await postgresPids(pool) : [];
  const sum = (pids: number[]) => pids.reduce((a, pid) => a + (processCpuSeconds(pid) ?? 0), 0);
  const t0 = performance.now();
  const self0 = process.cpuUsage();
  const pg0 = sum(pgPids);
  const child0 = sum(childPids);
  const m0 = machineTicks();
  return {
    stop() {
      const wall = (performance.now() - t0) / 1000;
      const self = process.cpuUsage(self0);
      const m1 = machineTicks();
      const benchProcessCores = (self.user + self.system) / 1e6 / wall;
      const childCores = childPids.length ? (sum(childPids) - child0) / wall : undefined;
      const postgresCores = pgPids.length ? (sum(pgPids) - pg0) / wall : undefined;
      const machineBusy = m0 && m1 && m1.total > m0.total ? (m1.busy - m0.busy) / (m1.total - m0.total) : undefined;
      const ours = benchProcessCores + (childCores ?? 0) + (postgresCores ?? 0);
      return {
        wallSeconds: wall,
        benchProcessCores,
        childCores,
        postgresCores,
        machineBusy,
        otherCores: machineBusy !== undefined && postgresCores !== undefined ? Math.max(0, machineBusy * cpus().length - ours) : undefined,
      };
    },
  };
}

/**
 * One sentence on where the CPU went in a window and what ran out first. `mainCores` is the
 * process whose event loop does the work being measured (the worker, the API).
 */
export function describeCpu(c: CpuWindow, main: { label: string; cores: number }): string {
  const pct = (cores: number) => `${Math.round(cores * 100)} %`;
  const parts = [`${main.label} ${pct(main.cores)} of a core`];
  if (c.postgresCores !== undefined) parts.push(`Postgres ${pct(c.postgresCores)}`);
  if (c.otherCores !== undefined) parts.push(`other processes on the machine ${pct(c.otherCores)}`);
  if (c.machineBusy !== undefined) parts.push(`machine ${pct(c.machineBusy)} busy (${cpus().length} CPUs)`);
  let verdict: string;
  if (main.cores >= 0.85) verdict = `${main.label} (one Node event loop) is CPU-bound`;
  else if (c.postgresCores !== undefined && c.postgresCores >= 0.85) verdict = "Postgres is CPU-bound";
  else if (c.machineBusy !== undefined && c.machineBusy >= 0.85) {
    verdict =
      c.otherCores !== undefined && c.otherCores >= 0.5
        ? "the machine's CPUs are saturated, partly by other processes: figures are lower than on an idle machine"
        : "the machine's CPUs are saturated (the benchmark's processes share them)";
  } else verdict = "no CPU is saturated: the work waits on round trips";
  return `${parts.join(", ")} → ${verdict}`;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Poll `check` every `everyMs` until it returns true or `timeoutMs` passes; returns whether it did. */
export async function waitUntil(check: () => Promise<boolean> | boolean, timeoutMs: number, everyMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(everyMs);
  }
}

export function round(value: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** `count` items, at most `parallel` at a time. */
export async function inParallel<T>(count: number, parallel: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(count);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(parallel, count) }, async () => {
      while (next < count) {
        const i = next++;
        out[i] = await fn(i);
      }
    }),
  );
  return out;
}
