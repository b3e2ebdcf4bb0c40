/**
 * `report.html`: one self-contained page (inline CSS and SVG, no scripts, no external assets)
 * that opens from disk or a CI artifact: results, the state diagram with exercised edges,
 * throughput over time per scenario, and the scaling curve.
 */
import { edgeLabel } from "../coverage.ts";
import { formatDuration, formatPercent, formatRate, scenarioCoverage, seedsUsed } from "./format.ts";
import { escapeXml as esc, renderLineChart, renderStateDiagram, type ChartMark } from "./svg.ts";
import { renderWaterfall } from "./waterfall.ts";
import type { RunSummary, ScalingCurve, ScenarioResult, TimelineMark } from "./types.ts";

const CSS = `
body{font:14px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;color:#0f172a;margin:0;background:#f8fafc}
main{max-width:1280px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;font-weight:700;color:#fff}
.pass{background:#16a34a}.fail{background:#dc2626}
.meta{color:#475569}
table{border-collapse:collapse;background:#fff;margin:8px 0}
th,td{border:1px solid #e2e8f0;padding:4px 10px;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px;margin:8px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}
.ok{color:#16a34a}.bad{color:#dc2626}
details summary{cursor:pointer}
code{background:#f1f5f9;padding:0 4px;border-radius:4px}
`;

function resultsTable(summary: RunSummary): string {
  const rows = summary.scenarios
    .map((s) => {
      const f = s.figures;
      return (
        `<tr><td>${esc(s.name)}</td><td><span class="badge ${s.passed ? "pass" : "fail"}">${s.passed ? "PASS" : "FAIL"}</span></td>` +
        `<td class="num">${f.documents}</td><td class="num">${f.workers}</td><td class="num">${formatDuration(f.durationMs)}</td>` +
        `<td class="num">${formatRate(f.throughputDocsPerSec)}</td><td class="num">${f.rateLimited429}</td><td class="num">${f.kills}</td>` +
        `<td class="num">${scenarioCoverage(s)}</td></tr>`
      );
    })
    .join("");
  return `<table><thead><tr><th>scenario</th><th>result</th><th>docs</th><th>workers</th><th>time</th><th>throughput</th><th>429s</th><th>kills</th><th>coverage</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function coverageSection(summary: RunSummary): string {
  const c = summary.coverage;
  if (!c) return `<h2>State machine</h2><div class="card">${renderStateDiagram(null)}<p>No coverage recorded.</p></div>`;
  const req = summary.requiredCoverage !== null ? ` — required ${summary.requiredCoverage}%` : "";
  const kinds = Object.entries(c.byKind)
    .filter(([, k]) => k)
    .map(([kind, k]) => `<tr><td>${kind}</td><td class="num">${k!.exercised}/${k!.total}</td><td class="num">${formatPercent(k!.percent)}</td></tr>`)
    .join("");
  const unexercised =
    c.unexercised.length === 0
      ? '<p class="ok">Every edge was exercised.</p>'
      : `<p>Never exercised: ${c.unexercised.map((u) => `<code>${esc(u)}</code>`).join(", ")}</p>`;
  const illegal =
    c.illegal.length === 0
      ? ""
      : `<p class="bad">Events outside the table: ${c.illegal.map((i) => `<code>${esc(edgeLabel(i))}</code> ×${i.count}`).join(", ")}</p>`;
  return (
    `<h2>State machine coverage: ${formatPercent(c.percent)} (${c.exercisedEdges}/${c.totalEdges} edges${req})</h2>` +
    `<div class="card">${renderStateDiagram(c)}</div>` +
    `<table><thead><tr><th>kind</th><th>exercised</th><th>%</th></tr></thead><tbody>${kinds}</tbody></table>${unexercised}${illegal}`
  );
}

function throughputSection(scenarios: readonly ScenarioResult[]): string {
  const charts = scenarios
    .filter((s) => s.throughput && s.throughput.points.length > 0)
    .map((s) => {
      const t = s.throughput!;
      const chart = renderLineChart({
        title: s.name,
        xLabel: "seconds since the first event",
        yLabel: "completed jobs / s",
        series: [
          { name: `completed/s (${t.bucketSeconds} s buckets)`, color: "#2563eb", points: [[0, 0], ...t.points.map((p) => [p.t, p.perSecond] as const)] },
        ],
        marks: chartMarks(s, t.startedAt),
        width: 600,
        height: 240,
      });
      return `<div class="card">${chart}</div>`;
    });
  return `<h2>Throughput over time</h2>${charts.length === 0 ? "<p>No completed jobs recorded.</p>" : `<div class="grid">${charts.join("")}</div>`}`;
}

const MARK_COLORS: Record<TimelineMark["kind"], string> = { kill: "#dc2626", restart: "#16a34a", freeze: "#7c3aed", postgres: "#ea580c", faults: "#d97706" };

/** The scenario's timeline on the throughput chart's axis (seconds from its first job event). */
function chartMarks(s: ScenarioResult, startedAt: string | null): ChartMark[] {
  if (!startedAt || !s.timeline) return [];
  const t0 = Date.parse(startedAt);
  const at = (ms: number) => Math.max(0, (ms - t0) / 1000);
  return s.timeline.map((k) => ({
    x: at(k.atMs),
    x2: k.untilMs === undefined ? undefined : at(k.untilMs),
    kind: k.kind,
    label: k.label,
    color: MARK_COLORS[k.kind],
  }));
}

/** Per scenario, the waterfalls of the documents whose traces the runner kept. */
function tracesSection(scenarios: readonly ScenarioResult[]): string {
  const traced = scenarios.filter((s) => s.traces && s.traces.length > 0);
  if (traced.length === 0) return "";
  const cards = traced.map((s) => {
    const kills = (s.timeline ?? []).filter((k) => k.kind === "kill");
    const docs = s.traces!.map((t) => {
      const workers = [...new Set(t.spans.map((x) => x.process))];
      const killed = workers.filter((w) => kills.some((k) => k.worker === w));
      return (
        `<div class="card"><p><strong>${esc(s.name)}</strong> · document <code>${esc(t.documentId)}</code> · ${esc(t.status)} · trace <code>${esc(t.traceId)}</code><br>` +
        `<span class="meta">processes: ${workers.map((w) => `${esc(w)}${killed.includes(w) ? " (killed)" : ""}`).join(", ")}</span></p>${renderWaterfall(t, kills)}</div>`
      );
    });
    return docs.join("");
  });
  return (
    `<h2>Traces</h2><p class="meta">A few documents per scenario (those another worker continued after a kill first, then those with retries): ` +
    `API requests <span style="color:#7c3aed">■</span>, stages <span style="color:#2563eb">■</span>, external calls <span style="color:#0d9488">■</span>, ` +
    `failed <span style="color:#dc2626">■</span>, retry / park / dead letter <span style="color:#d97706">◆</span>, kills as dashed red lines.</p>${cards.join("")}`
  );
}

function scalingSection(curve: ScalingCurve | null): string {
  if (!curve || curve.points.length === 0) return "";
  const chart = renderLineChart({
    title: "Throughput by worker processes",
    xLabel: "worker processes",
    yLabel: "docs / s",
    series: [
      {
        name: "measured (efficiency)",
        color: "#2563eb",
        points: curve.points.map((p) => [p.workers, p.docsPerSecond] as const),
        labels: curve.points.map((p) => formatPercent(Math.round(p.efficiencyPercent))),
      },
      { name: "linear ideal", color: "#94a3b8", dashed: true, points: curve.points.map((p) => [p.workers, p.idealDocsPerSecond] as const) },
    ],
    xTicks: curve.points.map((p) => p.workers),
  });
  const rows = curve.points
    .map(
      (p) =>
        `<tr><td class="num">${p.workers}</td><td class="num">${p.docsPerSecond.toFixed(2)}</td><td class="num">${p.idealDocsPerSecond.toFixed(2)}</td>` +
        `<td class="num ${p.efficiencyPercent >= curve.targetEfficiencyPercent ? "ok" : "bad"}">${formatPercent(p.efficiencyPercent)}</td></tr>`,
    )
    .join("");
  const verdict =
    curve.saturatesAt === null
      ? `Efficiency stays at or above ${curve.targetEfficiencyPercent}% at every measured size.`
      : `Efficiency falls below ${curve.targetEfficiencyPercent}% at ${curve.saturatesAt} workers.`;
  return (
    `<h2>Multi-worker scaling</h2><div class="card scaling">${chart}</div>` +
    `<table><thead><tr><th>workers</th><th>docs/s</th><th>linear ideal</th><th>efficiency</th></tr></thead><tbody>${rows}</tbody></table><p>${esc(verdict)}</p>`
  );
}

function scenarioDetails(s: ScenarioResult): string {
  const errors = s.errors.map((e) => `<li class="bad">${esc(e)}</li>`).join("");
  const checks = (s.invariants?.checks ?? [])
    .map((c) => {
      const list = c.violations.length > 0 ? `<ul>${c.violations.map((v) => `<li>${esc(v)}</li>`).join("")}</ul>` : "";
      const note = c.note ? ` <span class="meta">(${esc(c.note)})</span>` : "";
      return `<li><span class="${c.ok ? "ok" : "bad"}">${c.ok ? "✓" : "✗"}</span> <code>${esc(c.name)}</code> ${esc(c.spec)}${note}${list}</li>`;
    })
    .join("");
  const faults = s.figures.faults
    ? Object.entries(s.figures.faults)
        .map(([k, n]) => `${esc(k)} ${n}`)
        .join(", ")
    : "";
  return (
    `<details class="card"${s.passed ? "" : " open"}><summary><strong>${esc(s.name)}</strong> — ${s.passed ? '<span class="ok">PASS</span>' : '<span class="bad">FAIL</span>'}` +
    `${s.description ? ` <span class="meta">${esc(s.description)}</span>` : ""}</summary>` +
    (errors ? `<ul>${errors}</ul>` : "") +
    (faults ? `<p>Faults injected: ${faults}</p>` : "") +
    (checks ? `<ul>${checks}</ul>` : "<p>Invariants not checked.</p>") +
    `</details>`
  );
}

export function renderHtml(summary: RunSummary): string {
  const env = summary.environment ? ` · Node ${esc(summary.environment.node)} on ${esc(summary.environment.platform)}, ${summary.environment.cpus} CPUs` : "";
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>upload-pipeline scenarios: ${summary.passed ? "PASS" : "FAIL"}</title><style>${CSS}</style></head>
<body><main>
<h1>upload-pipeline scenarios <span class="badge ${summary.passed ? "pass" : "fail"}">${summary.passed ? "PASS" : "FAIL"}</span></h1>
<p class="meta">${esc(summary.startedAt)} · ${formatDuration(summary.durationMs)} · ${seedsUsed(summary, (v) => `<code>${esc(v)}</code>`, esc)}${env}</p>
<h2>Results</h2>${resultsTable(summary)}
${coverageSection(summary)}
${throughputSection(summary.scenarios)}
${tracesSection(summary.scenarios)}
${scalingSection(summary.scaling)}
<h2>Invariants</h2>${summary.scenarios.map(scenarioDetails).join("\n")}
</main></body></html>
`;
}
