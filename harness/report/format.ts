/** Number and duration formatting shared by the terminal table and the Markdown/HTML reports. */
import type { ScenarioResult } from "./types.ts";

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
