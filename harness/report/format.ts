/** Number and duration formatting shared by the terminal table and the Markdown/HTML reports. */
import type { RunSummary, ScenarioResult } from "./types.ts";

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
}

export const formatRate = (docsPerSec: number): string => `${docsPerSec.toFixed(docsPerSec < 10 ? 2 : 1)} docs/s`;

export const formatPercent = (p: number): string => `${Number.isInteger(p) ? p : p.toFixed(1)}%`;

export const scenarioCoverage = (s: ScenarioResult): string => (s.coverage ? formatPercent(s.coverage.percent) : "—");

/** Failed checks and errors of a scenario, one line each (what to print under a FAIL). */
export function failureLines(s: ScenarioResult): string[] {
  const lines = [...s.errors];
  for (const c of s.invariants?.checks ?? []) {
    if (!c.ok) lines.push(`${c.name} (${c.spec}): ${c.violationCount} violation${c.violationCount === 1 ? "" : "s"}: ${c.violations[0] ?? ""}`);
  }
  return lines;
}

/**
 * The seed(s) the scenarios really ran with: `--seed`, else each scenario's own (one value when
 * they share it). `code` wraps a value, `text` escapes a scenario name.
 */
export function seedsUsed(summary: RunSummary, code: (value: string) => string, text: (s: string) => string = (s) => s): string {
  if (typeof summary.seed === "number") return `seed ${code(String(summary.seed))}`;
  const seeded = summary.scenarios.filter((s) => s.seed !== undefined);
  const distinct = [...new Set(seeded.map((s) => s.seed))];
  if (distinct.length === 0) return `seed ${code(String(summary.seed))}`;
  if (distinct.length === 1) return `seed ${code(String(distinct[0]))}`;
  return `seeds ${seeded.map((s) => `${text(s.name)} ${code(String(s.seed))}`).join(", ")}`;
}
