/**
 * `npm run bench [-- --only <name>[,<name>…]] [--quick]`: SPEC §9's performance figures, measured
 * in one run on one PostgreSQL, printed as a table and written to `reports/bench/bench.json`.
 *
 * Benchmarks report; they do not judge. The exit code is 0 whenever every benchmark ran, met
 * targets or not (a slow machine is not a failure); 1 when a benchmark itself broke; 2 on a bad
 * flag. Multi-worker scaling is measured by `npm run scenario -- multi-worker-scaling` (real
 * worker processes against the mocks) and is not repeated here.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import { migrate } from "../src/db/migrate.ts";
import { provisionDatabase, withDatabase } from "../src/db/provision.ts";
import { runClaimBench } from "./claim.ts";
import { runCpuBench } from "./cpu.ts";
import { runMemoryBench } from "./memory.ts";
import { runPeersBench } from "./peers.ts";
import { runQueueBench } from "./queue.ts";
import { runRateLimitBench } from "./ratelimit.ts";
import { runFleetBench } from "./fleet.ts";
import { runStartupBench } from "./startup.ts";
import { adminQuery, BENCH_NAMES, type BenchContext, type BenchName, type BenchResult, type Figure } from "./support.ts";
import { runWebhookBench } from "./webhook.ts";

const REPORT_PATH = "reports/bench/bench.json";

const USAGE = `usage: npm run bench -- [--only <name>[,<name>...]] [--quick]

  --only NAME    run only these benchmarks (repeatable or comma-separated): ${BENCH_NAMES.join(", ")}
  --quick        shorter runs, to check that the benchmarks work (figures are rougher)
  --help         this text

Benchmarks (SPEC §9), in this order:
  queue       stage transitions/s with no-op stages, 1 process × 1, 4, 16 slots
  ratelimit   sustained embedding tokens/min vs the OpenAI mock's TPM limit, and 429s per request
  memory      peak RSS of a real worker process on a document of S and of 10×S
  webhook     POST /webhooks/llamaparse with autocannon (signature verified): req/s, p50/p99
  startup     a worker process from spawn to "worker started": node (type stripping) vs the tsx loader
  cpu         worker CPU-seconds per MiB of document, per stage
  peers       our transitions/s beside graphile-worker and pg-boss (no-op jobs and the 9-stage pipeline)
  fleet       1, 2, 4, 8 processes on one key: tokens/min vs TPM and 429s, shared governor on and off
  claim       the claim with 10^6 complete jobs in the table: its plan (generic) and time, against none

Multi-worker scaling: npm run scenario -- multi-worker-scaling
PostgreSQL: DATABASE_URL when set (a database per run is created on it), else an embedded one.
Writes ${REPORT_PATH}; exit 0 when every benchmark ran (targets met or not), 1 if one broke, 2 on bad flags.`;

const RUNNERS: Record<BenchName, (ctx: BenchContext) => Promise<BenchResult>> = {
  queue: runQueueBench,
  ratelimit: runRateLimitBench,
  memory: runMemoryBench,
  webhook: runWebhookBench,
  startup: runStartupBench,
  cpu: runCpuBench,
  peers: runPeersBench,
  fleet: runFleetBench,
  claim: runClaimBench,
};

function usageError(message: string): never {
  process.stderr.write(`bench: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function parseFlags(argv: string[]): { only: BenchName[]; quick: boolean } {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: false,
      options: { only: { type: "string", multiple: true }, quick: { type: "boolean" }, help: { type: "boolean" } },
    });
  } catch (err) {
    usageError((err as Error).message);
  }
  if (parsed.values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const requested = (parsed.values.only ?? []).flatMap((v) => v.split(",")).map((v) => v.trim());
  if (parsed.values.only && requested.every((v) => v === "")) usageError("--only needs a benchmark name");
  const unknown = requested.filter((v) => v !== "" && !(BENCH_NAMES as readonly string[]).includes(v));
  if (unknown.length) usageError(`unknown benchmark ${unknown.map((u) => `'${u}'`).join(", ")} for --only; expected one of ${BENCH_NAMES.join(", ")}`);
  const only = BENCH_NAMES.filter((n) => requested.includes(n));
  return { only: only.length ? only : [...BENCH_NAMES], quick: parsed.values.quick ?? false };
}

async function main(): Promise<number> {
  const flags = parseFlags(process.argv.slice(2));
  const started = new Date();
  const log = (line: string) => process.stderr.write(`[bench ${((Date.now() - started.getTime()) / 1000).toFixed(1).padStart(5)}s] ${line}\n`);
  const load = loadavg();
  log(`running ${flags.only.join(", ")}${flags.quick ? " (--quick)" : ""}; load average ${load.map((l) => l.toFixed(2)).join(" ")} on ${cpus().length} CPUs`);

  const db = await provisionDatabase({ databaseUrl: process.env.DATABASE_URL });
  const templateDb = `bench_template_${process.pid}`;
  const results: BenchResult[] = [];
  const failures: Array<{ name: BenchName; error: string }> = [];
  let postgresVersion = "";
  try {
    await adminQuery(db.url, `CREATE DATABASE ${templateDb}`);
    await migrate(withDatabase(db.url, templateDb), { log: () => {} });
    postgresVersion = (await adminQuery<{ server_version: string }>(db.url, "SHOW server_version")).rows[0]?.server_version ?? "";
    log(`PostgreSQL ${postgresVersion} (${db.kind === "embedded" ? "embedded, temporary" : "DATABASE_URL"})`);
    const ctx: BenchContext = { quick: flags.quick, serverUrl: db.url, templateDb, log };
    for (const name of flags.only) {
      try {
        results.push(await RUNNERS[name](ctx));
      } catch (err) {
        const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
        log(`${name}: FAILED: ${message}`);
        failures.push({ name, error: message.split("\n")[0]! });
      }
    }
  } finally {
    await adminQuery(db.url, `DROP DATABASE IF EXISTS ${templateDb} WITH (FORCE)`).catch(() => {});
    await db.stop();
  }

  const report = {
    startedAt: started.toISOString(),
    durationMs: Date.now() - started.getTime(),
    quick: flags.quick,
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? "",
      memoryMiB: Math.round(totalmem() / 2 ** 20),
      loadAverageAtStart: load,
      node: process.version,
      postgres: postgresVersion,
      database: db.kind,
    },
    benchmarks: Object.fromEntries(results.map((r) => [r.name, r])),
    failures,
    references: {
      multiWorkerScaling: "npm run scenario -- multi-worker-scaling (report: reports/latest/report.md, scaling curve and efficiency vs linear)",
    },
  };
  const out = resolve(REPORT_PATH);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  if (results.length) process.stdout.write(`${formatTable(results)}\n`);
  for (const f of failures) process.stdout.write(`\n${f.name}: the benchmark broke: ${f.error}\n`);
  process.stdout.write(
    `\nMulti-worker scaling: npm run scenario -- multi-worker-scaling\nWritten: ${REPORT_PATH} (${(report.durationMs / 1000).toFixed(0)} s)\n`,
  );
  return failures.length ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// The table

function formatValue(f: Figure): string {
  const n = Math.abs(f.value) >= 1000 ? Math.round(f.value).toLocaleString("en-US") : String(f.value);
  if (f.unit === "ratio") return `${n}×`;
  if (f.unit === "%") return `${n} %`;
  return `${n} ${f.unit}`;
}

function formatTarget(f: Figure): string {
  if (!f.target) return "";
  const bound = f.unit === "ratio" ? `${f.target.bound}×` : f.unit === "%" ? `${f.target.bound} %` : `${f.target.bound} ${f.unit}`;
  return `${f.target.op} ${bound}`;
}

export function formatTable(results: BenchResult[]): string {
  const rows: string[][] = [["benchmark", "figure", "value", "target", ""]];
  for (const r of results) {
    r.figures.forEach((f, i) => {
      rows.push([i === 0 ? r.name : "", f.label, formatValue(f), formatTarget(f), f.target ? (f.met ? "met" : "NOT met") : ""]);
    });
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const line = (row: string[]) =>
    row
      .map((cell, c) => (c === 2 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!)))
      .join("  ")
      .trimEnd();
  const out = [line(rows[0]!), widths.map((w) => "─".repeat(w)).join("  ")];
  let first = true;
  for (const row of rows.slice(1)) {
    if (row[0] && !first) out.push("");
    first = false;
    out.push(line(row));
  }
  for (const r of results) {
    out.push("", `${r.title} (${(r.durationMs / 1000).toFixed(0)} s)`);
    for (const note of r.notes) out.push(`  - ${note}`);
  }
  return out.join("\n");
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
