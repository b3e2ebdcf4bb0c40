/**
 * `--only cpu`: CPU-seconds per MiB of markdown that a worker process spends in each stage, and
 * in all of them. With the mocks answering at once, this is what a document costs the worker's
 * CPU, so it predicts where the scaling curve saturates on a bigger machine: N cores keep up with
 * about N ÷ (CPU-seconds per MiB) MiB per second of documents, if Postgres keeps up too.
 *
 * Two sizes in one run: if the CPU per MiB of the larger one is much higher, some stage's work
 * grows faster than the document (the progress counters recounted after every batch did, O(N²)).
 */
import { runWorkerOnDocument, formatBytes, type WorkerRun } from "./memory.ts";
import { figure, round, type BenchContext, type BenchResult } from "./support.ts";

const MiB = 1024 * 1024;
const STAGES = ["submit", "validate", "chunk", "embed", "finish"] as const;

export async function runCpuBench(ctx: BenchContext): Promise<BenchResult> {
  const started = Date.now();
  const sizes = ctx.quick ? [256 * 1024, 1 * MiB] : [1 * MiB, 4 * MiB];
  const runs: WorkerRun[] = [];
  for (const bytes of sizes) {
    ctx.log(`cpu: worker process on a ${formatBytes(bytes)} document`);
    const run = await runWorkerOnDocument(ctx, bytes);
    ctx.log(
      `cpu: ${formatBytes(bytes)}: ${Object.entries(run.cpuByStage)
        .map(([k, v]) => `${k} ${v.toFixed(2)} s`)
        .join(", ")}`,
    );
    runs.push(run);
  }
  const perMiB = (run: WorkerRun, stage?: string) => {
    const seconds = stage ? (run.cpuByStage[stage] ?? 0) : STAGES.reduce((a, s) => a + (run.cpuByStage[s] ?? 0), 0);
    return seconds / (run.documentBytes / MiB);
  };
  /** The server's CPU over the whole job (every stage, and the API's parse intake), per MiB. */
  const postgresPerMiB = (run: WorkerRun) => ((run.cpu.postgresCores ?? 0) * run.cpu.wallSeconds) / (run.documentBytes / MiB);
  const [small, large] = runs as [WorkerRun, WorkerRun];
  return {
    name: "cpu",
    title: "CPU per document: worker CPU-seconds per MiB of markdown, by stage",
    figures: [
      ...STAGES.map((stage) =>
        figure(`cpu_s_per_mib_${stage}`, `${stage}, ${formatBytes(large.documentBytes)} document`, round(perMiB(large, stage), 3), "CPU-s/MiB"),
      ),
      figure("cpu_s_per_mib_total", `all stages, ${formatBytes(large.documentBytes)} document`, round(perMiB(large), 3), "CPU-s/MiB"),
      figure("cpu_s_per_mib_total_small", `all stages, ${formatBytes(small.documentBytes)} document`, round(perMiB(small), 3), "CPU-s/MiB"),
      figure("postgres_cpu_s_per_mib", `PostgreSQL, ${formatBytes(large.documentBytes)} document`, round(postgresPerMiB(large), 3), "CPU-s/MiB"),
      figure("postgres_cpu_s_per_mib_small", `PostgreSQL, ${formatBytes(small.documentBytes)} document`, round(postgresPerMiB(small), 3), "CPU-s/MiB"),
      figure(
        "cpu_growth",
        `CPU per MiB, ${formatBytes(large.documentBytes)} ÷ ${formatBytes(small.documentBytes)}`,
        round(perMiB(large) / perMiB(small), 2),
        "ratio",
      ),
    ],
    notes: [
      "One worker process (1 slot, every other setting, EMBED_BATCH_SIZE included, at its default) against the mocks over HTTP; its CPU sampled from /proc every 100 ms and attributed to the stage whose state the job was in. Parse intake runs in the API (the webhook hands it over), so it is not in the worker's figures.",
      ...runs.map(
        (r) =>
          `${formatBytes(r.documentBytes)}: ${r.chunks} chunks, ${r.batches} batches, ${r.status} in ${r.seconds.toFixed(1)} s; worker ${Object.entries(
            r.cpuByStage,
          )
            .map(([k, v]) => `${k} ${v.toFixed(2)}`)
            .join(", ")} CPU-s.`,
      ),
      `At ${round(perMiB(large), 2)} CPU-s/MiB, one core keeps up with about ${round(1 / perMiB(large), 2)} MiB of markdown per second in the worker.`,
    ],
    details: {
      runs: runs.map((r) => ({ documentBytes: r.documentBytes, chunks: r.chunks, batches: r.batches, seconds: r.seconds, cpuByStage: r.cpuByStage })),
    },
    durationMs: Date.now() - started,
  };
}
