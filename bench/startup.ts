/**
 * `--only startup`: how long a worker process takes from spawn to "worker started" (connected,
 * listening, slots running), the way a supervisor or the scenario runner starts it. Three ways
 * to start the same `src/worker/main.ts`, interleaved in one run so machine load hits each alike:
 *
 * - `tsx` CLI: what `npm run worker` ran before (a tsx process that spawns node with its loader:
 *   two processes, and a signal sent to the first must be relayed to the second);
 * - `node --import tsx`: one process, but esbuild compiles every file at start-up;
 * - `node` (type stripping): what every command runs now; Node 24 erases the types itself.
 *
 * The ratio of the old command to the new one is the figure; tsx stays a devDependency for this
 * comparison only.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { WORKER_NODE_FLAGS, workerNodeEnv } from "../src/worker/nodeFlags.ts";
import { createDatabase, figure, round, type BenchContext, type BenchResult } from "./support.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const WORKER_ENTRY = "src/worker/main.ts";

const MODES = {
  tsxCli: { label: "tsx CLI (old npm run worker)", command: `${ROOT}node_modules/.bin/tsx`, args: [WORKER_ENTRY] },
  tsxLoader: { label: "node --import tsx", command: process.execPath, args: ["--import", "tsx", WORKER_ENTRY] },
  native: { label: "node (type stripping), no compile cache", command: process.execPath, args: [...WORKER_NODE_FLAGS, WORKER_ENTRY] },
  nativeCached: { label: "node, compile cache warm (npm run worker)", command: process.execPath, args: [...WORKER_NODE_FLAGS, WORKER_ENTRY] },
} as const;
type Mode = keyof typeof MODES;

/** VmRSS of a process, MiB. */
function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? Number.NaN) / 1024;
}

/**
 * Spawn → the "worker started" line, in ms, and the RSS of the process that logged it (the
 * worker itself, whatever started it) 1 s later; then SIGTERM and wait for the exit.
 */
async function startOnce(mode: Mode, env: NodeJS.ProcessEnv): Promise<{ ms: number; rssMiB: number }> {
  const { command, args } = MODES[mode];
  const t0 = performance.now();
  const { NODE_COMPILE_CACHE: _, ...uncached } = env;
  const child = spawn(command, args, { cwd: ROOT, env: mode === "nativeCached" ? workerNodeEnv(env) : uncached, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  try {
    const ms = await new Promise<number>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        output += chunk.toString("utf8");
        if (output.includes('"worker started"')) resolve(performance.now() - t0);
      };
      child.stdout.on("data", onData);
      child.stderr.on("data", onData);
      void exited.then((code) => reject(new Error(`${MODES[mode].label}: the worker exited (${code}) before it started:\n${output.slice(-2000)}`)));
      setTimeout(() => reject(new Error(`${MODES[mode].label}: no "worker started" within 60 s:\n${output.slice(-2000)}`)), 60_000).unref();
    });
    const started = JSON.parse(output.split("\n").find((l) => l.includes('"worker started"'))!) as { pid: number };
    await new Promise((r) => setTimeout(r, 1_000));
    return { ms, rssMiB: rssMiB(started.pid) };
  } finally {
    child.kill("SIGTERM");
    await exited;
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

export async function runStartupBench(ctx: BenchContext): Promise<BenchResult> {
  const started = Date.now();
  const repeats = ctx.quick ? 2 : 7;
  const db = await createDatabase(ctx, "startup", 2);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DATABASE_URL: db.url,
    // Nothing is called at start-up; the services only need valid addresses.
    OPENAI_API_KEY: "sk-startup",
    OPENAI_BASE_URL: "http://127.0.0.1:9/v1",
    LLAMA_CLOUD_API_KEY: "llx-startup",
    LLAMA_CLOUD_BASE_URL: "http://127.0.0.1:9",
    SUPABASE_URL: "http://127.0.0.1:9",
    SUPABASE_SERVICE_ROLE_KEY: "startup",
    WEBHOOK_BASE_URL: "http://127.0.0.1:9",
    WORKER_CONCURRENCY: "1",
    LOG_LEVEL: "info",
    UPLOAD_PIPELINE_CRASH_AT: "",
  };
  const times: Record<Mode, number[]> = { tsxCli: [], tsxLoader: [], native: [], nativeCached: [] };
  const rss: Record<Mode, number[]> = { tsxCli: [], tsxLoader: [], native: [], nativeCached: [] };
  try {
    // One warm-up each (file cache), not counted; then the modes in turn.
    for (const mode of Object.keys(MODES) as Mode[]) await startOnce(mode, env);
    for (let i = 0; i < repeats; i++) {
      for (const mode of Object.keys(MODES) as Mode[]) {
        const r = await startOnce(mode, env);
        times[mode].push(r.ms);
        rss[mode].push(r.rssMiB);
      }
      ctx.log(
        `startup: round ${i + 1}/${repeats}: ${(Object.keys(MODES) as Mode[]).map((m) => `${MODES[m].label} ${Math.round(times[m].at(-1)!)} ms`).join(", ")}`,
      );
    }
  } finally {
    await db.drop();
  }
  const med = Object.fromEntries((Object.keys(MODES) as Mode[]).map((m) => [m, median(times[m])])) as Record<Mode, number>;
  const medRss = Object.fromEntries((Object.keys(MODES) as Mode[]).map((m) => [m, median(rss[m])])) as Record<Mode, number>;
  return {
    name: "startup",
    title: 'Worker start-up: spawn → "worker started"',
    figures: [
      figure("startup_native_cached_ms", `median, ${MODES.nativeCached.label}`, Math.round(med.nativeCached), "ms"),
      figure("startup_native_ms", `median, ${MODES.native.label}`, Math.round(med.native), "ms"),
      figure("startup_tsx_loader_ms", `median, ${MODES.tsxLoader.label}`, Math.round(med.tsxLoader), "ms"),
      figure("startup_tsx_cli_ms", `median, ${MODES.tsxCli.label}`, Math.round(med.tsxCli), "ms"),
      figure("startup_speedup", "tsx CLI ÷ node (type stripping)", round(med.tsxCli / med.native, 2), "ratio"),
      figure("startup_cache_speedup", "no compile cache ÷ compile cache warm", round(med.native / med.nativeCached, 2), "ratio"),
      figure("idle_rss_native_cached_mib", `idle RSS 1 s after start, ${MODES.nativeCached.label}`, round(medRss.nativeCached, 1), "MiB"),
      figure("idle_rss_native_mib", `idle RSS 1 s after start, ${MODES.native.label}`, round(medRss.native, 1), "MiB"),
      figure("idle_rss_tsx_mib", `idle RSS 1 s after start, ${MODES.tsxLoader.label}`, round(medRss.tsxLoader, 1), "MiB"),
    ],
    notes: [
      `${repeats} starts per way, interleaved, after one warm-up start each; each worker connects to a fresh database, LISTENs and starts 1 slot, then gets SIGTERM.`,
      "npm run worker|api|mocks|migrate|scenario|bench run node directly (type stripping); tsx is kept only as this benchmark's baseline.",
    ],
    details: { repeats, times, rss },
    durationMs: Date.now() - started,
  };
}
