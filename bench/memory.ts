/**
 * Memory: the peak RSS of a worker process is flat in document size (SPEC §9: a 10× larger
 * document adds < 20 %).
 *
 * For each size, a fresh environment: a database cloned from the template, the mocks over HTTP,
 * the API (production wiring) on loopback for LlamaParse's webhook, and one real worker process
 * (`src/worker/main.ts` under `node` (type stripping), one slot), started and left idle before the
 * document is uploaded, so its start-up is behind it. The document then goes through every
 * stage (submit, parse intake by webhook, validate, chunk, embed, finish) while this process
 * samples the worker's `/proc/<pid>/status`. The figure is `VmHWM` (the kernel's peak RSS of the
 * process) once the job is complete; the sampled `VmRSS` curve is kept in bench.json.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import type pg from "pg";
import { buildWiredApp } from "../src/api/wiring.ts";
import { configForLocalMocks } from "../src/config.ts";
import { documentId, jobId, sha256 } from "../src/ids.ts";
import { createLogger } from "../src/logger.ts";
import { createPipelineServices } from "../src/services.ts";
import { createJob } from "../src/state-machine/transition.ts";
import { WORKER_NODE_FLAGS, workerNodeEnv } from "../src/worker/nodeFlags.ts";
import { markdownDocument } from "../harness/corpus.ts";
import { mulberry32 } from "../mocks/shared/rng.ts";
import { startMockServer } from "../mocks/server.ts";
import {
  cpuWindow,
  createDatabase,
  processCpuSeconds,
  figure,
  round,
  sleep,
  waitUntil,
  type BenchContext,
  type BenchResult,
  type CpuWindow,
} from "./support.ts";

const WORKER_ENTRY = new URL("../src/worker/main.ts", import.meta.url).pathname;
const KiB = 1024;
const MiB = 1024 * 1024;

export interface WorkerRun {
  documentBytes: number;
  chunks: number;
  batches: number;
  status: string;
  seconds: number;
  /** VmHWM once the worker had started and sat idle (before the upload), MiB. */
  idlePeakMiB: number;
  /** VmRSS when the document was uploaded, MiB. */
  idleRssMiB: number;
  /** VmHWM once the job was complete, MiB: the figure. */
  peakMiB: number;
  /** Highest sampled VmRSS while the job ran, MiB. */
  sampledPeakMiB: number;
  /**
   * RssAnon (private anonymous memory: the heaps, not the `node` binary's file-backed pages,
   * which every worker on a host shares) when the document was uploaded, and its highest sample, MiB.
   */
  idleAnonMiB: number;
  sampledPeakAnonMiB: number;
  /** [ms since upload, RssAnon MiB], every 100 ms. */
  anon: Array<[number, number]>;
  cpu: CpuWindow;
  /** [state entered, ms since the upload began]. */
  stages: Array<[string, number]>;
  /** Highest sampled VmRSS while each stage ran, MiB. */
  peakByStage: Record<string, number>;
  /** [ms since upload, VmRSS MiB], every 100 ms. */
  rss: Array<[number, number]>;
  /** CPU-seconds (user + system) the worker spent while each stage ran. */
  cpuByStage: Record<string, number>;
}

export async function runMemoryBench(ctx: BenchContext): Promise<BenchResult> {
  const started = Date.now();
  // The smaller document must already bring the worker to its steady state: a Node process's
  // RSS climbs over its first ~25 embedding batches (allocator and V8 pages it keeps), then stays
  // flat. With 300 KiB (5 batches) against 3 MiB the ratio measured that warm-up (1.50×), not
  // growth with the document. BENCH_MEMORY_KIB sets the smaller size.
  const small = ctx.quick ? 100 * KiB : Number(process.env.BENCH_MEMORY_KIB ?? 1024) * KiB;
  const large = small * 10;
  // A process's peak RSS moves by tens of MiB from run to run with GC timing, so each size
  // runs twice (alternating) and the figures use the mean.
  const repeats = ctx.quick ? 1 : 2;
  const runs: WorkerRun[] = [];
  for (let i = 0; i < repeats; i++) {
    for (const bytes of [small, large]) {
      ctx.log(`memory: worker process on a ${formatBytes(bytes)} document${repeats > 1 ? ` (${i + 1}/${repeats})` : ""}`);
      const run = await runWorkerOnDocument(ctx, bytes);
      ctx.log(
        `memory: ${formatBytes(bytes)}: peak RSS ${run.peakMiB.toFixed(1)} MiB (idle ${run.idleRssMiB.toFixed(1)} MiB), ${run.chunks} chunks, ${run.seconds.toFixed(1)} s, ${run.status}`,
      );
      runs.push(run);
    }
  }
  const mean = (bytes: number, pick: (r: WorkerRun) => number) => {
    const of = runs.filter((r) => r.documentBytes === bytes).map(pick);
    return of.reduce((a, b) => a + b, 0) / of.length;
  };
  const largeMean = (pick: (r: WorkerRun) => number) => round(mean(large, pick), 1);
  const peakS = mean(small, (r) => r.peakMiB);
  const peakL = mean(large, (r) => r.peakMiB);
  const ratio = peakL / peakS;
  const peaks = (bytes: number) =>
    runs
      .filter((r) => r.documentBytes === bytes)
      .map((r) => r.peakMiB.toFixed(0))
      .join(" and ");
  const first = (bytes: number) => runs.find((r) => r.documentBytes === bytes)!;
  return {
    name: "memory",
    title: "Memory: peak RSS of a worker process vs document size",
    figures: [
      figure("peak_rss_small_mib", `peak RSS, ${formatBytes(small)} document`, round(peakS, 1), "MiB"),
      figure("peak_rss_large_mib", `peak RSS, ${formatBytes(large)} document`, round(peakL, 1), "MiB", { op: "<=", bound: 200 }),
      figure(
        "steady_rss_large_mib",
        `steady RSS (median sample), ${formatBytes(large)} document`,
        largeMean((r) => median(r.rss.map(([, v]) => v))),
        "MiB",
        {
          op: "<=",
          bound: 150,
        },
      ),
      figure(
        "idle_rss_mib",
        "idle RSS before the upload",
        largeMean((r) => r.idleRssMiB),
        "MiB",
      ),
      figure("peak_rss_ratio", "peak RSS, 10× document ÷ 1× document", round(ratio, 3), "ratio", { op: "<", bound: 1.2 }),
      // Beside RSS, not instead of it (the targets are on RSS): the anonymous part is what each
      // further worker on a host adds; the rest is mostly the `node` binary's pages, shared.
      figure(
        "idle_anon_mib",
        "idle RssAnon (private anonymous) before the upload",
        largeMean((r) => r.idleAnonMiB),
        "MiB",
      ),
      figure(
        "steady_anon_large_mib",
        `steady RssAnon (median sample), ${formatBytes(large)} document`,
        largeMean((r) => median(r.anon.map(([, v]) => v))),
        "MiB",
      ),
      figure(
        "peak_anon_large_mib",
        `highest RssAnon sampled, ${formatBytes(large)} document`,
        largeMean((r) => r.sampledPeakAnonMiB),
        "MiB",
      ),
    ],
    notes: [
      `One worker process (1 slot, every other setting, EMBED_BATCH_SIZE included, at its default) per run, started and idle before the upload; every stage runs in it except parse intake, which the webhook hands to the API. ${repeats > 1 ? `Each size ran ${repeats} times; the figures are means (peaks ${peaks(small)} MiB and ${peaks(large)} MiB).` : ""}`,
      ...[first(small), first(large)].map(
        (r) =>
          `${formatBytes(r.documentBytes)}: ${r.chunks} chunks in ${r.batches} embedding batches, ${r.status} in ${r.seconds.toFixed(1)} s; RSS idle ${r.idleRssMiB.toFixed(1)} MiB → peak ${r.peakMiB.toFixed(1)} MiB; highest RSS sampled per stage: ${Object.entries(
            r.peakByStage,
          )
            .map(([k, v]) => `${k} ${v.toFixed(0)}`)
            .join(", ")} MiB.`,
      ),
      `The 10× document added ${(peakL - peakS).toFixed(1)} MiB to the peak (${round((ratio - 1) * 100, 1)} %). Peak RSS of a Node process includes garbage V8 has not collected yet, so it also grows with how long a stage keeps allocating, not only with what it holds.`,
    ],
    details: { repeats, runs },
    durationMs: Date.now() - started,
  };
}

/** One worker process (1 slot) takes one markdown document of `bytes` through every stage; RSS and CPU sampled. */
export async function runWorkerOnDocument(ctx: BenchContext, bytes: number): Promise<WorkerRun> {
  const db = await createDatabase(ctx, "memory", 6);
  const mock = await startMockServer({ seed: 11 });
  const silent = createLogger({ level: "silent" });
  const apiConfig = configForLocalMocks(mock.baseUrl, { ...mock.env, SUPABASE_JWT_SECRET: mock.mocks.keys.jwtSecret, DATABASE_URL: db.url });
  const app = await buildWiredApp({ pool: db.pool, config: apiConfig, log: silent });
  let child: ChildProcess | undefined;
  let sampler: NodeJS.Timeout | undefined;
  const output: string[] = [];
  try {
    const apiUrl = await app.listen({ port: 0, host: "127.0.0.1" });
    child = spawn(process.execPath, [...WORKER_NODE_FLAGS, WORKER_ENTRY], {
      env: workerNodeEnv({
        ...process.env,
        ...mock.env,
        DATABASE_URL: db.url,
        WEBHOOK_BASE_URL: apiUrl,
        WORKER_CONCURRENCY: "1",
        WEBHOOK_DEADLINE_SECONDS: "10",
        POLL_INTERVAL_MS: "200",
        LOG_LEVEL: "info",
        UPLOAD_PIPELINE_CRASH_AT: "",
      }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (chunk: Buffer) => {
      output.push(chunk.toString("utf8"));
      if (output.length > 200) output.splice(0, output.length - 200);
    };
    child.stdout!.on("data", keep);
    child.stderr!.on("data", keep);
    const exited = new Promise<number | null>((resolve) => child!.once("exit", (code) => resolve(code)));
    const pid = child.pid!;
    const describe = () => `worker output (last lines):\n${output.join("").split("\n").slice(-15).join("\n")}`;

    const startedUp = await Promise.race([waitUntil(() => output.join("").includes("worker started"), 60_000, 50), exited.then(() => false)]);
    if (!startedUp) throw new Error(`the worker did not start. ${describe()}`);
    await sleep(1_500); // let start-up garbage settle before the idle reading
    const idle = procStatus(pid);

    const uploadedAt = Date.now();
    const upload = await uploadDocument(db.pool, apiConfig, markdownDocument(mulberry32(bytes), `Memory benchmark ${bytes}`, bytes));
    const t0 = performance.now();
    const cpu = await cpuWindow(db.pool, [pid]);
    const rss: Array<[number, number]> = [];
    const anon: Array<[number, number]> = [];
    const cpuSeconds: Array<[number, number]> = [[0, processCpuSeconds(pid) ?? 0]];
    sampler = setInterval(() => {
      const at = Math.round(performance.now() - t0);
      const s = procStatus(pid);
      if (s) {
        rss.push([at, round(s.rssMiB, 1)]);
        anon.push([at, round(s.anonMiB, 1)]);
      }
      const c = processCpuSeconds(pid);
      if (c !== undefined) cpuSeconds.push([at, c]);
    }, 100);
    let status = "";
    // 90 s, and 30 s more per MiB: on a shared 2-CPU machine at load 17 a 10 MiB document had
    // stored 19 of its 140 batches after 90 s.
    const deadline = 90_000 + 30_000 * Math.ceil(bytes / MiB);
    let workerExit: number | null | undefined;
    void exited.then((code) => (workerExit = code));
    const done = await waitUntil(
      async () => {
        if (workerExit !== undefined) throw new Error(`the worker exited (code ${workerExit}) before the job finished. ${describe()}`);
        const { rows } = await db.pool.query<{ status: string }>("SELECT status FROM upload_pipeline.upload_jobs WHERE job_id = $1", [upload.jobId]);
        status = rows[0]?.status ?? "missing";
        return status === "complete" || status.startsWith("failed_");
      },
      deadline,
      100,
    );
    clearInterval(sampler);
    const window = cpu.stop();
    const seconds = (performance.now() - t0) / 1000;
    const end = procStatus(pid);
    if (!done) {
      const { rows } = await db.pool.query("SELECT progress, attempts, last_error, lease_expires_at FROM upload_pipeline.upload_jobs WHERE job_id = $1", [
        upload.jobId,
      ]);
      const openai = mock.mocks.stats().requests["openai.embeddings"];
      const activity = await db.pool.query(
        "SELECT pid, state, wait_event_type, wait_event, left(query, 100) AS query, round(extract(epoch FROM now() - query_start)) AS seconds FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
      );
      throw new Error(
        `the job did not finish within ${deadline / 1000} s (status ${status}, job ${JSON.stringify(rows[0])}, OpenAI mock answers ${JSON.stringify(openai)}, ` +
          `sessions ${JSON.stringify(activity.rows)}). ${describe()}`,
      );
    }
    if (status !== "complete") throw new Error(`the job ended in ${status}. ${describe()}`);
    if (!idle || !end) throw new Error("could not read /proc/<pid>/status of the worker (this benchmark needs Linux)");
    const { rows } = await db.pool.query<{ chunks: number; batches: number }>(
      "SELECT (SELECT count(*)::int FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1) AS chunks, coalesce((progress->>'batches_done')::int, 0) AS batches FROM upload_pipeline.upload_jobs WHERE job_id = $2",
      [upload.documentId, upload.jobId],
    );
    const events = await db.pool.query<{ to_status: string; ms: number }>(
      "SELECT to_status, (extract(epoch FROM at) * 1000 - $2)::int AS ms FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id",
      [upload.jobId, uploadedAt],
    );
    return {
      documentBytes: bytes,
      chunks: rows[0]?.chunks ?? 0,
      batches: rows[0]?.batches ?? 0,
      status,
      seconds,
      idlePeakMiB: round(idle.hwmMiB, 1),
      idleRssMiB: round(idle.rssMiB, 1),
      peakMiB: round(end.hwmMiB, 1),
      sampledPeakMiB: Math.max(0, ...rss.map(([, v]) => v)),
      idleAnonMiB: round(idle.anonMiB, 1),
      sampledPeakAnonMiB: Math.max(0, ...anon.map(([, v]) => v)),
      anon,
      cpu: window,
      stages: events.rows.map((e) => [e.to_status, e.ms] as [string, number]),
      peakByStage: peakByStage(events.rows, rss),
      rss,
      cpuByStage: cpuByStage(events.rows, cpuSeconds),
    };
  } finally {
    clearInterval(sampler);
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((resolve) => child!.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child!.kill("SIGKILL"), 10_000);
      await gone;
      clearTimeout(timer);
    }
    await app.close();
    await mock.close();
    await db.drop();
  }
}

/** The stage that works on a job in each state (parse_queued: waiting for LlamaParse's webhook). */
const STAGE_OF: Record<string, string> = {
  uploaded: "submit",
  parse_queued: "awaiting parse",
  parsed: "validate",
  parse_validated: "chunk",
  chunking: "chunk",
  chunks_stored: "embed",
  embedding_queued: "embed",
  embedding_in_progress: "embed",
  embeddings_stored: "finish",
};

/** Attribute each RSS sample to the stage running when it was taken (the sample after a stage's end counts too). */
function peakByStage(events: Array<{ to_status: string; ms: number }>, rss: Array<[number, number]>): Record<string, number> {
  const peaks: Record<string, number> = {};
  events.forEach((e, i) => {
    const stage = STAGE_OF[e.to_status];
    if (!stage) return;
    const end = events[i + 1]?.ms ?? Infinity;
    const inside = rss.filter(([t]) => t >= e.ms && t <= end);
    const after = rss.find(([t]) => t > end);
    const values = [...inside, ...(after ? [after] : [])].map(([, v]) => v);
    if (values.length) peaks[stage] = Math.max(peaks[stage] ?? 0, ...values);
  });
  return peaks;
}

/** CPU-seconds spent from each stage's first event to the next event (samples every 100 ms, so ±0.1 s per boundary). */
function cpuByStage(events: Array<{ to_status: string; ms: number }>, cpu: Array<[number, number]>): Record<string, number> {
  const at = (ms: number) => [...cpu].reverse().find(([t]) => t <= ms)?.[1] ?? cpu[0]![1];
  const spent: Record<string, number> = {};
  events.forEach((e, i) => {
    const stage = STAGE_OF[e.to_status];
    if (!stage) return;
    const end = events[i + 1]?.ms ?? cpu.at(-1)![0];
    spent[stage] = (spent[stage] ?? 0) + Math.max(0, at(end) - at(e.ms));
  });
  return spent;
}

/** Store the file and create its document and job, as the API's upload does once the object exists. */
async function uploadDocument(pool: pg.Pool, config: ReturnType<typeof configForLocalMocks>, text: string): Promise<{ documentId: string; jobId: string }> {
  const bytes = new TextEncoder().encode(text);
  const userId = randomUUID();
  const fileSha = sha256(bytes);
  const docId = documentId(userId, fileSha);
  const rawPath = `${userId}/raw/${docId}/document.md`;
  const { storage } = createPipelineServices(config);
  await storage.upload(rawPath, bytes, "text/markdown", { upsert: true });
  await pool.query(
    `INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
     VALUES ($1, $2, 'document.md', 'text/markdown', $3, $4, $5)`,
    [docId, userId, bytes.byteLength, fileSha, rawPath],
  );
  const id = jobId(docId);
  await createJob(pool, { jobId: id, documentId: docId, correlationId: randomUUID(), maxAttempts: config.MAX_ATTEMPTS });
  return { documentId: docId, jobId: id };
}

/** VmRSS, VmHWM and RssAnon of a process, in MiB. */
function procStatus(pid: number): { rssMiB: number; hwmMiB: number; anonMiB: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1]);
    const rss = kib("VmRSS");
    const hwm = kib("VmHWM");
    const anon = kib("RssAnon");
    return Number.isFinite(rss) && Number.isFinite(hwm) && Number.isFinite(anon) ? { rssMiB: rss / 1024, hwmMiB: hwm / 1024, anonMiB: anon / 1024 } : undefined;
  } catch {
    return undefined;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)]! : Number.NaN;
}

export function formatBytes(n: number): string {
  return n >= MiB ? `${round(n / MiB, 2)} MiB` : `${round(n / KiB, 0)} KiB`;
}
