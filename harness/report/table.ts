/**
 * The end-of-run table in the terminal:
 *
 *   scenario        result  docs  time    throughput   coverage
 *   happy-path      PASS      20  4.2 s   4.76 docs/s  33.3%
 */
import { formatDuration, formatPercent, formatRate, scenarioCoverage } from "./format.ts";
import type { RunSummary, ScenarioResult } from "./types.ts";

export interface TableOptions {
  /** ANSI colours for PASS/FAIL (default: off; pass `process.stdout.isTTY`). */
  color?: boolean;
}

const ANSI = /\u001b\[[0-9;]*m/g;
const visible = (s: string) => s.replace(ANSI, "").length;
const pad = (s: string, w: number, right: boolean) => (right ? " ".repeat(w - visible(s)) + s : s + " ".repeat(w - visible(s)));

/** One row per scenario (scenario | result | docs | time | throughput | coverage), plus a total row when a summary is given. */
export function formatResultsTable(input: RunSummary | readonly ScenarioResult[], opts: TableOptions = {}): string {
  const summary = Array.isArray(input) ? null : (input as RunSummary);
  const scenarios: readonly ScenarioResult[] = summary ? summary.scenarios : (input as readonly ScenarioResult[]);
  const paint = (s: string, code: number) => (opts.color ? `\u001b[${code}m${s}\u001b[0m` : s);
  const header = ["scenario", "result", "docs", "time", "throughput", "coverage"];
  const rightAligned = [false, false, true, true, true, true];
  const rows = scenarios.map((s) => [
    s.name,
    s.passed ? paint("PASS", 32) : paint("FAIL", 31),
    String(s.figures.documents),
    formatDuration(s.figures.durationMs),
    formatRate(s.figures.throughputDocsPerSec),
    scenarioCoverage(s),
  ]);
  if (summary) {
    const docs = scenarios.reduce((n, s) => n + s.figures.documents, 0);
    rows.push([
      "total",
      summary.passed ? paint("PASS", 32) : paint("FAIL", 31),
      String(docs),
      formatDuration(summary.durationMs),
      "",
      summary.coverage ? `${formatPercent(summary.coverage.percent)}${summary.requiredCoverage !== null ? ` (≥ ${summary.requiredCoverage}%)` : ""}` : "—",
    ]);
  }
  const widths = header.map((h, i) => Math.max(visible(h), ...rows.map((r) => visible(r[i]!))));
  const line = (cells: string[]) => cells.map((c, i) => pad(c, widths[i]!, rightAligned[i]!)).join("  ");
  const rule = widths.map((w) => "─".repeat(w)).join("  ");
  const body = rows.map(line);
  if (summary) body.splice(body.length - 1, 0, rule);
  return [line(header), rule, ...body].join("\n");
}
