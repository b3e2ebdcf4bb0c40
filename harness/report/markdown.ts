/** `report.md`: the run as Markdown, readable in a CI log or a pull request comment. */
import { edgeLabel } from "../coverage.ts";
import { failureLines, formatDuration, formatPercent, formatRate, scenarioCoverage, seedsUsed } from "./format.ts";
import type { RunSummary } from "./types.ts";

const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");

export function renderMarkdown(summary: RunSummary): string {
  const out: string[] = [];
  out.push(`# Scenario run: ${summary.passed ? "PASS" : "FAIL"}`, "");
  out.push(`- started ${summary.startedAt}, took ${formatDuration(summary.durationMs)}, ${seedsUsed(summary, (v) => `\`${v}\``)}`);
  if (summary.environment) out.push(`- Node ${summary.environment.node} on ${summary.environment.platform}, ${summary.environment.cpus} CPUs`);
  if (summary.coverage) {
    const c = summary.coverage;
    const req = summary.requiredCoverage !== null ? ` (required ${summary.requiredCoverage}%)` : "";
    out.push(
      `- state-machine coverage ${formatPercent(c.percent)}${req}: ${c.exercisedEdges}/${c.totalEdges} edges${c.includesCreateEdge ? "" : " (∅ → uploaded not counted)"}`,
    );
  }
  out.push("", "| scenario | result | docs | workers | time | throughput | 429s | kills | coverage |", "|---|---|--:|--:|--:|--:|--:|--:|--:|");
  for (const s of summary.scenarios) {
    const f = s.figures;
    out.push(
      `| ${cell(s.name)} | ${s.passed ? "PASS" : "**FAIL**"} | ${f.documents} | ${f.workers} | ${formatDuration(f.durationMs)} | ${formatRate(f.throughputDocsPerSec)} | ${f.rateLimited429} | ${f.kills} | ${scenarioCoverage(s)} |`,
    );
  }

  const failed = summary.scenarios.filter((s) => !s.passed);
  if (failed.length > 0) {
    out.push("", "## Failures", "");
    for (const s of failed) {
      out.push(`### ${s.name}`, "");
      for (const line of s.errors) out.push(`- ${line}`);
      for (const c of s.invariants?.checks ?? []) {
        if (c.ok) continue;
        out.push(`- **${c.name}** (${c.spec}), ${c.violationCount} violation${c.violationCount === 1 ? "" : "s"}:`);
        for (const v of c.violations) out.push(`  - ${v}`);
      }
      if (failureLines(s).length === 0) out.push("- failed without a recorded reason");
      out.push("");
    }
  }

  if (summary.coverage) {
    const c = summary.coverage;
    out.push("", "## State-machine coverage", "", "| kind | exercised | total | % |", "|---|--:|--:|--:|");
    for (const [kind, k] of Object.entries(c.byKind)) if (k) out.push(`| ${kind} | ${k.exercised} | ${k.total} | ${formatPercent(k.percent)} |`);
    out.push("", "| edge | kind | taken | by |", "|---|---|--:|---|");
    for (const e of c.edges) {
      out.push(
        `| ${edgeLabel(e)} | ${e.kind} | ${e.count} | ${
          Object.entries(e.byActor)
            .map(([a, n]) => `${a} ${n}`)
            .join(", ") || "—"
        } |`,
      );
    }
    if (c.unexercised.length > 0) out.push("", `Never exercised: ${c.unexercised.map((u) => `\`${u}\``).join(", ")}.`);
    if (c.illegal.length > 0) out.push("", `Events outside the table: ${c.illegal.map((i) => `\`${edgeLabel(i)}\` ×${i.count}`).join(", ")}.`);
  }

  if (summary.scaling) {
    const sc = summary.scaling;
    out.push("", "## Multi-worker scaling", "", "| workers | docs/s | linear ideal | efficiency |", "|--:|--:|--:|--:|");
    for (const p of sc.points)
      out.push(`| ${p.workers} | ${p.docsPerSecond.toFixed(2)} | ${p.idealDocsPerSecond.toFixed(2)} | ${formatPercent(p.efficiencyPercent)} |`);
    out.push(
      "",
      sc.saturatesAt === null
        ? `Efficiency stays ≥ ${sc.targetEfficiencyPercent}% at every measured size.`
        : `Efficiency falls below ${sc.targetEfficiencyPercent}% at ${sc.saturatesAt} workers.`,
    );
  }

  out.push("", "## Invariants by scenario", "");
  for (const s of summary.scenarios) {
    const checks = s.invariants?.checks ?? [];
    out.push(`- ${s.name}: ${checks.length === 0 ? "not checked" : checks.map((c) => `${c.ok ? "✓" : "✗"} ${c.name}`).join(", ")}`);
  }
  return `${out.join("\n")}\n`;
}
