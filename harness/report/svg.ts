/**
 * Inline SVG for the HTML report: the state diagram with exercised edges marked, and a small
 * line chart. Hand-written rather than a charting library so the page stays one file with no
 * scripts and no external assets.
 */
import { FAILED_STATES, FAILURE_OF, PIPELINE_STATES, type JobStatus } from "../../src/state-machine/table.ts";
import { edgeLabel, type CoverageReport, type EdgeCoverage } from "../coverage.ts";

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

const fmt = (n: number): string => (Number.isInteger(n) ? String(n) : n.toFixed(Math.abs(n) < 10 ? 2 : 1));

// ── State diagram ────────────────────────────────────────────────────────────────────────────

/*
 * Sized so the state names stay readable where the report is read: at a 1400 px wide window the
 * page's card is 1206 px wide, so the 1440-unit-wide diagram is drawn at 0.84 scale and 14-unit
 * labels come out at 11.7 px (the old 2014-unit diagram drew 11-unit labels at 6.6 px). Names
 * wrap at their first underscore to fit the narrower boxes.
 */
const BOX_W = 108;
const BOX_H = 52;
const GAP = 30;
const X0 = 60;
const Y_PIPE = 60;
const Y_FAIL = 250;
export const STATE_LABEL_PX = 14;
/** The report card's inner width at a 1400 px window: main 1280 − 2 × 24 padding − 2 × 12 card padding − 2 border. */
export const CARD_WIDTH_AT_1400 = 1206;

/** A state name as the lines drawn in its box: split at the first underscore. */
export function stateLabelLines(state: string): string[] {
  const cut = state.indexOf("_");
  return cut === -1 ? [state] : [state.slice(0, cut), state.slice(cut + 1)];
}
const LINE = STATE_LABEL_PX + 2;
const COLORS = { forward: "#2563eb", failure: "#dc2626", retry: "#7c3aed", create: "#2563eb", off: "#cbd5e1" } as const;

const boxX = (i: number) => X0 + i * (BOX_W + GAP);
const centerX = (s: JobStatus) => boxX(PIPELINE_STATES.indexOf(s as (typeof PIPELINE_STATES)[number])) + BOX_W / 2;

/** The failed states' boxes span the pipeline states that fail into them. */
function failedBox(state: (typeof FAILED_STATES)[number]): { x: number; w: number } {
  const sources = Object.entries(FAILURE_OF)
    .filter(([, f]) => f === state)
    .map(([s]) => PIPELINE_STATES.indexOf(s as (typeof PIPELINE_STATES)[number]));
  const x = boxX(Math.min(...sources));
  return { x, w: boxX(Math.max(...sources)) + BOX_W - x };
}

function edgeTitle(e: EdgeCoverage): string {
  const actors = Object.entries(e.byActor)
    .map(([a, n]) => `${a} ${n}`)
    .join(", ");
  return `${edgeLabel(e)} (${e.kind}): ${e.count === 0 ? "never taken" : `${e.count}× — ${actors}`}`;
}

function edgeLine(e: EdgeCoverage, x1: number, y1: number, x2: number, y2: number, label: { x: number; y: number; anchor: string }): string {
  const on = e.count > 0;
  const color = on ? COLORS[e.kind] : COLORS.off;
  const dash = e.kind === "retry" || !on ? ` stroke-dasharray="${on ? "6 3" : "4 3"}"` : "";
  const attrs = `class="edge ${on ? "exercised" : "unexercised"} ${e.kind}" data-edge="${escapeXml(edgeLabel(e))}" data-count="${e.count}"`;
  const text = on ? `<text x="${label.x}" y="${label.y}" text-anchor="${label.anchor}" class="count" fill="${color}">${e.count}</text>` : "";
  return (
    `<g ${attrs}><title>${escapeXml(edgeTitle(e))}</title>` +
    `<line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="${color}" stroke-width="${on ? 3 : 1.5}"${dash} marker-end="url(#arrow-${on ? e.kind : "off"})"/>` +
    `${text}</g>`
  );
}

/**
 * The 13 states as boxes in pipeline order with the failed states below; every edge of the
 * table as an arrow, exercised ones coloured by kind and labelled with their count, the others
 * grey and dashed. `coverage` null draws the bare machine.
 */
export function renderStateDiagram(coverage: CoverageReport | null): string {
  const edges = coverage?.edges ?? [];
  const find = (from: JobStatus | null, to: JobStatus): EdgeCoverage =>
    edges.find((e) => e.from === from && e.to === to) ?? { from, to, kind: from === null ? "create" : "forward", actors: [], count: 0, byActor: {} };
  const width = boxX(PIPELINE_STATES.length - 1) + BOX_W + 30;
  const height = Y_FAIL + BOX_H + 70;
  const entered = new Set(edges.filter((e) => e.count > 0).map((e) => e.to));
  const parts: string[] = [];

  const markers = (Object.entries(COLORS) as Array<[string, string]>)
    .map(
      ([k, c]) =>
        `<marker id="arrow-${k}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="${c}"/></marker>`,
    )
    .join("");
  parts.push(`<defs>${markers}</defs>`);

  const box = (state: JobStatus, x: number, y: number, w: number, failed: boolean) => {
    const visited = entered.has(state);
    const fill = failed ? (visited ? "#fee2e2" : "#fff7f7") : visited ? "#dbeafe" : "#f8fafc";
    const stroke = failed ? "#dc2626" : "#1e3a8a";
    const lines = stateLabelLines(state);
    parts.push(
      `<g class="state${visited ? " visited" : ""}" data-state="${state}"><rect x="${x}" y="${y}" width="${w}" height="${BOX_H}" rx="8" fill="${fill}" stroke="${stroke}" stroke-width="1.5"/>` +
        `<text x="${x + w / 2}" y="${y + BOX_H / 2 + 5 - ((lines.length - 1) * LINE) / 2}" text-anchor="middle" class="state-label">` +
        lines.map((line, i) => `<tspan x="${x + w / 2}"${i > 0 ? ` dy="${LINE}"` : ""}>${line}</tspan>`).join("") +
        `</text></g>`,
    );
  };

  // Create edge from a start dot.
  const create = find(null, "uploaded");
  parts.push(`<circle cx="${X0 - 40}" cy="${Y_PIPE + BOX_H / 2}" r="6" fill="#1e3a8a"/>`);
  parts.push(edgeLine(create, X0 - 33, Y_PIPE + BOX_H / 2, X0 - 2, Y_PIPE + BOX_H / 2, { x: X0 - 18, y: Y_PIPE + BOX_H / 2 - 7, anchor: "middle" }));

  // Forward edges between neighbours.
  for (let i = 0; i + 1 < PIPELINE_STATES.length; i++) {
    const y = Y_PIPE + BOX_H / 2;
    const e = find(PIPELINE_STATES[i]!, PIPELINE_STATES[i + 1]!);
    parts.push(edgeLine(e, boxX(i) + BOX_W, y, boxX(i + 1) - 2, y, { x: boxX(i) + BOX_W + GAP / 2, y: y - 8, anchor: "middle" }));
  }

  // Failure edges down (left of centre) and retry edges back up (right of centre).
  for (const [from, failed] of Object.entries(FAILURE_OF) as Array<[JobStatus, JobStatus]>) {
    const cx = centerX(from);
    const top = Y_PIPE + BOX_H;
    const mid = (top + Y_FAIL) / 2;
    parts.push(edgeLine(find(from, failed), cx - 12, top, cx - 12, Y_FAIL - 2, { x: cx - 17, y: mid, anchor: "end" }));
    parts.push(edgeLine(find(failed, from), cx + 12, Y_FAIL, cx + 12, top + 2, { x: cx + 17, y: mid + 14, anchor: "start" }));
  }

  PIPELINE_STATES.forEach((s, i) => {
    box(s, boxX(i), Y_PIPE, BOX_W, false);
  });
  for (const f of FAILED_STATES) {
    const { x, w } = failedBox(f);
    box(f, x, Y_FAIL, w, true);
  }

  // Legend.
  const ly = Y_FAIL + BOX_H + 40;
  const legend: Array<[string, string, boolean]> = [
    ["forward", COLORS.forward, false],
    ["failure (dead letter)", COLORS.failure, false],
    ["retry (operator)", COLORS.retry, true],
    ["not exercised", COLORS.off, true],
  ];
  legend.forEach(([label, color, dashed], i) => {
    const x = X0 + i * 250;
    parts.push(
      `<line x1="${x}" y1="${ly}" x2="${x + 36}" y2="${ly}" stroke="${color}" stroke-width="3"${dashed ? ' stroke-dasharray="6 3"' : ""}/>` +
        `<text x="${x + 44}" y="${ly + 4}" class="legend">${label}</text>`,
    );
  });
  const summary = coverage ? `${coverage.exercisedEdges}/${coverage.totalEdges} edges exercised (${fmt(coverage.percent)}%)` : "no coverage recorded";
  parts.push(`<text x="${width - 30}" y="${ly + 4}" text-anchor="end" class="legend">${escapeXml(summary)}</text>`);

  return (
    `<svg class="state-diagram" viewBox="0 0 ${width} ${height}" width="100%" role="img" aria-label="State machine with exercised edges">` +
    `<style>.state-label{font:600 ${STATE_LABEL_PX}px system-ui,sans-serif;fill:#0f172a}.count{font:700 13px system-ui,sans-serif}.legend{font:14px system-ui,sans-serif;fill:#334155}</style>` +
    parts.join("") +
    `</svg>`
  );
}

// ── Line chart ──────────────────────────────────────────────────────────────────────────────

export interface ChartSeries {
  name: string;
  color: string;
  dashed?: boolean;
  points: ReadonlyArray<readonly [number, number]>;
  /** Text drawn above each point (same order as `points`), e.g. an efficiency. */
  labels?: readonly string[];
}

/** Something that happened during the run, drawn on the x axis: a line at `x`, or a band to `x2`. */
export interface ChartMark {
  x: number;
  x2?: number | undefined;
  /** What it is (`kill`, `restart`, `faults`, …): its legend entry and CSS class. */
  kind: string;
  /** Short text drawn by the mark. */
  label: string;
  color: string;
}

export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly ChartSeries[];
  width?: number;
  height?: number;
  /** Ticks on the x axis (e.g. the measured worker counts); default: evenly spaced. */
  xTicks?: readonly number[];
  /** Events on the x axis (kills, restarts, fault bursts), so a dip can be tied to its cause. */
  marks?: readonly ChartMark[];
}

/** Width of `text` at the charts' 11 px legend font (a generous 6.5 px a character). */
export const legendTextWidth = (text: string): number => Math.ceil(text.length * 6.5);

interface LegendEntry {
  name: string;
  color: string;
  dashed?: boolean | undefined;
  /** A mark's swatch is a short vertical line; a series' a horizontal one. */
  vertical?: boolean;
}

/** Legend entries flowed left to right under the title, wrapping inside the chart: nothing is cut off at the edge. */
function layoutLegend(entries: readonly LegendEntry[], left: number, right: number, top: number): { svg: string[]; bottom: number } {
  const svg: string[] = [];
  let x = left;
  let y = top;
  for (const e of entries) {
    const w = 28 + legendTextWidth(e.name);
    if (x > left && x + w > right) {
      x = left;
      y += 16;
    }
    const dash = e.dashed ? ' stroke-dasharray="6 4"' : "";
    svg.push(
      e.vertical
        ? `<line x1="${x + 11}" y1="${y - 6}" x2="${x + 11}" y2="${y + 6}" stroke="${e.color}" stroke-width="2"${dash}/>`
        : `<line x1="${x}" y1="${y}" x2="${x + 22}" y2="${y}" stroke="${e.color}" stroke-width="2"${dash}/>`,
    );
    svg.push(`<text x="${x + 28}" y="${y + 4}" class="tick legend-entry">${escapeXml(e.name)}</text>`);
    x += w + 16;
  }
  return { svg, bottom: y };
}

/** A step of 1, 2 or 5 × 10^k giving about `ticks` intervals over `span`. */
function niceStep(span: number, ticks: number): number {
  const raw = span / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
}

export function renderLineChart(opts: LineChartOptions): string {
  const width = opts.width ?? 640;
  const height = opts.height ?? 280;
  const m = { left: 56, right: 16, top: 34, bottom: 44 };
  const all = opts.series.flatMap((s) => s.points);
  const marks = opts.marks ?? [];
  const markKinds = [...new Map(marks.map((k) => [k.kind, k.color])).entries()];
  const legend = layoutLegend(
    [...opts.series, ...markKinds.map(([name, color]) => ({ name, color, dashed: true, vertical: true }))],
    m.left,
    width - m.right,
    38,
  );
  m.top = legend.bottom + 16;
  const head = `<svg class="chart" viewBox="0 0 ${width} ${height}" width="100%" style="max-width:${width}px" role="img" aria-label="${escapeXml(opts.title)}">`;
  const title = `<text x="${m.left}" y="20" class="chart-title">${escapeXml(opts.title)}</text>`;
  const style = `<style>.chart-title{font:600 13px system-ui,sans-serif;fill:#0f172a}.tick{font:11px system-ui,sans-serif;fill:#475569}.axis-label{font:11px system-ui,sans-serif;fill:#334155}.mark-label{font:600 10px system-ui,sans-serif}</style>`;
  if (all.length === 0) {
    return `${head}${style}${title}<text x="${width / 2}" y="${height / 2}" text-anchor="middle" class="tick">no data</text></svg>`;
  }
  let xMin = Math.min(...all.map((p) => p[0]));
  let xMax = Math.max(...all.map((p) => p[0]), ...marks.map((k) => k.x2 ?? k.x));
  if (xMax === xMin) {
    xMin -= 1;
    xMax += 1;
  }
  const yStep = niceStep(Math.max(...all.map((p) => p[1]), 1e-9), 5);
  const yMax = Math.ceil(Math.max(...all.map((p) => p[1]), 1e-9) / yStep) * yStep;
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const sx = (x: number) => m.left + ((x - xMin) / (xMax - xMin)) * pw;
  const sy = (y: number) => m.top + ph - (y / yMax) * ph;
  const parts: string[] = [head, style, title];

  for (let y = 0; y <= yMax + yStep / 2; y += yStep) {
    parts.push(`<line x1="${m.left}" y1="${sy(y)}" x2="${m.left + pw}" y2="${sy(y)}" stroke="#e2e8f0"/>`);
    parts.push(`<text x="${m.left - 6}" y="${sy(y) + 4}" text-anchor="end" class="tick">${fmt(y)}</text>`);
  }
  const xStep = niceStep(xMax - xMin, 6);
  const xTicks: number[] = [];
  if (opts.xTicks) xTicks.push(...opts.xTicks);
  else for (let x = Math.ceil(xMin / xStep) * xStep; x <= xMax + 1e-9; x += xStep) xTicks.push(x);
  for (const x of xTicks) {
    parts.push(`<text x="${sx(x)}" y="${m.top + ph + 16}" text-anchor="middle" class="tick">${fmt(x)}</text>`);
  }
  parts.push(`<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="#64748b"/>`);
  parts.push(`<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#64748b"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="${height - 6}" text-anchor="middle" class="axis-label">${escapeXml(opts.xLabel)}</text>`);
  parts.push(`<text transform="translate(14 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle" class="axis-label">${escapeXml(opts.yLabel)}</text>`);

  opts.series.forEach((s) => {
    const pts = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    parts.push(
      `<polyline class="series" data-series="${escapeXml(s.name)}" points="${pts}" fill="none" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
    );
    if (s.points.length <= 40) for (const [x, y] of s.points) parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${s.color}"/>`);
    s.labels?.forEach((label, k) => {
      const p = s.points[k];
      // The first and last labels lean inwards so they stay off the axis and inside the frame.
      const anchor = k === 0 ? "start" : k === s.points.length - 1 ? "end" : "middle";
      const dx = k === 0 ? 6 : 0;
      if (p)
        parts.push(
          `<text x="${(sx(p[0]) + dx).toFixed(1)}" y="${(sy(p[1]) + 16).toFixed(1)}" text-anchor="${anchor}" class="tick" fill="${s.color}">${escapeXml(label)}</text>`,
        );
    });
  });
  marks.forEach((k, i) => {
    const x1 = sx(Math.max(xMin, k.x));
    const label = `<text x="${(x1 + 3).toFixed(1)}" y="${m.top + 11 + (i % 3) * 12}" class="mark-label" fill="${k.color}">${escapeXml(k.label)}</text>`;
    const shape =
      k.x2 !== undefined
        ? `<rect x="${x1.toFixed(1)}" y="${m.top}" width="${Math.max(2, sx(Math.min(xMax, k.x2)) - x1).toFixed(1)}" height="${ph}" fill="${k.color}" fill-opacity="0.12"/>`
        : `<line x1="${x1.toFixed(1)}" y1="${m.top}" x2="${x1.toFixed(1)}" y2="${m.top + ph}" stroke="${k.color}" stroke-width="1.5" stroke-dasharray="4 3"/>`;
    parts.push(`<g class="mark ${escapeXml(k.kind)}" data-x="${fmt(k.x)}"><title>${escapeXml(`${k.kind}: ${k.label}`)}</title>${shape}${label}</g>`);
  });
  parts.push(...legend.svg);
  parts.push("</svg>");
  return parts.join("");
}
