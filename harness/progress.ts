/**
 * Live progress in the terminal: on a TTY one line per scenario redrawn in place (a bar of
 * terminal jobs, counts by state, kills); elsewhere (CI logs) a line every few seconds. Kills,
 * restarts and faults are printed as they happen.
 */
import type { JobStatus } from "../src/state-machine/table.ts";
import type { ScenarioResult } from "./report/index.ts";
import type { Progress } from "./runner.ts";
import { formatJepsen } from "./jepsen.ts";

const SHORT: Partial<Record<JobStatus, string>> = {
  uploaded: "up",
  parse_queued: "pq",
  parsed: "pa",
  parse_validated: "pv",
  chunking: "ch",
  chunks_stored: "cs",
  embedding_queued: "eq",
  embedding_in_progress: "em",
  embeddings_stored: "es",
  complete: "ok",
  failed_parse: "fp",
  failed_chunking: "fc",
  failed_embedding: "fe",
};

export function createProgress(out: NodeJS.WriteStream) {
  const tty = Boolean(out.isTTY);
  let current = "";
  let lastPrinted = 0;
  let drawn = false;
  const clear = () => {
    if (tty && drawn) out.write("\r\x1b[2K");
    drawn = false;
  };
  out.write(
    `states: ${Object.entries(SHORT)
      .map(([state, short]) => `${short}=${state}`)
      .join(" ")}\n`,
  );
  return {
    start(name: string) {
      current = name;
      lastPrinted = 0;
      out.write(`\n▶ ${name}\n`);
    },
    line(text: string) {
      clear();
      out.write(`${text}\n`);
    },
    update(p: Progress) {
      const terminal = (p.byState.complete ?? 0) + (p.byState.failed_parse ?? 0) + (p.byState.failed_chunking ?? 0) + (p.byState.failed_embedding ?? 0);
      const width = 24;
      const filled = p.total ? Math.round((terminal / p.total) * width) : 0;
      const states = Object.entries(p.byState)
        .map(([s, n]) => `${SHORT[s as JobStatus] ?? s}:${n}`)
        .join(" ");
      const text = `  ${(p.elapsedMs / 1000).toFixed(1).padStart(6)}s [${"█".repeat(filled)}${"░".repeat(width - filled)}] ${terminal}/${p.total}  ${states}  kills:${p.kills}`;
      if (tty) {
        clear();
        out.write(text.slice(0, (out.columns ?? 120) - 1));
        drawn = true;
      } else if (p.elapsedMs - lastPrinted >= 5000) {
        lastPrinted = p.elapsedMs;
        out.write(`${text}\n`);
      }
    },
    finish(result: ScenarioResult) {
      clear();
      const figures = `${result.figures.documents} docs in ${(result.figures.durationMs / 1000).toFixed(1)}s`;
      out.write(`${result.passed ? "✔" : "✘"} ${current}: ${result.passed ? "passed" : "FAILED"} (${figures})\n`);
      for (const e of result.errors) out.write(`    ${e}\n`);
      if (result.figures.jepsen) out.write(`    ${formatJepsen(result.figures.jepsen)}\n`);
      if (result.figures.reached?.length) out.write(`    reached: ${result.figures.reached.join(", ")}\n`);
      for (const c of result.invariants?.checks ?? []) if (!c.ok) out.write(`    ✘ ${c.name}: ${c.violations.slice(0, 5).join("; ")}\n`);
    },
  };
}
