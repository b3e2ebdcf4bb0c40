/**
 * A document's trace as a waterfall: one row per span in start order (indented under its parent),
 * bars on a time axis from the upload, coloured by kind (API request, stage, external call),
 * failed spans red, retries/parks/dead letters as diamonds, and the kills of the workers in the
 * trace as dashed red lines, so a document continued by another worker after a SIGKILL shows
 * both workers and the kill between them.
 */
import { escapeXml as esc } from "./svg.ts";
import type { DocumentTrace, TimelineMark, TraceSpan } from "./types.ts";

const ROW = 18;
const LABEL_W = 330;
const TOP = 34;
/** Rows drawn at most; a document with more (hundreds of embedding batches) says how many were left out. */
export const WATERFALL_MAX_ROWS = 60;
const SETTLEMENTS = new Set(["retry", "parked", "dead_letter"]);
const COLOR = { server: "#7c3aed", client: "#0d9488", internal: "#2563eb", error: "#dc2626", settlement: "#d97706", kill: "#dc2626" } as const;

const fmtS = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;

function spanTitle(s: TraceSpan): string {
  const facts = [
    s.process,
    `${Math.round(s.endMs - s.startMs)} ms`,
    s.attempt !== undefined ? `attempt ${s.attempt}` : "",
    s.status !== undefined ? `HTTP ${s.status}` : "",
    s.error ? `error ${s.error}` : "",
  ].filter(Boolean);
  return `${s.name} (${facts.join(", ")})`;
}

/** The waterfall of `trace`; `kills` are the run's kill marks (those of this trace's workers are drawn). */
export function renderWaterfall(trace: DocumentTrace, kills: readonly TimelineMark[] = [], width = 1160): string {
  const spans = trace.spans.slice(0, WATERFALL_MAX_ROWS);
  const left = trace.spans.length - spans.length;
  const processes = new Set(trace.spans.map((s) => s.process));
  const t0 = Math.min(...trace.spans.map((s) => s.startMs));
  const lastEnd = Math.max(...trace.spans.map((s) => s.endMs));
  const ownKills = kills.filter((k) => k.kind === "kill" && k.worker && processes.has(k.worker) && k.atMs >= t0 && k.atMs <= lastEnd);
  const t1 = Math.max(lastEnd, t0 + 1);
  const plotW = width - LABEL_W - 16;
  const x = (ms: number) => LABEL_W + ((ms - t0) / (t1 - t0)) * plotW;
  const height = TOP + spans.length * ROW + (left > 0 ? ROW : 0) + 10;
  const parts: string[] = [
    `<svg class="waterfall" data-document="${esc(trace.documentId)}" viewBox="0 0 ${width} ${height}" width="100%" role="img" aria-label="trace of document ${esc(trace.documentId)}">`,
    `<style>.wf-label{font:12px system-ui,sans-serif;fill:#0f172a}.wf-proc{fill:#64748b}.wf-tick{font:11px system-ui,sans-serif;fill:#475569}</style>`,
  ];
  // Time axis: about 8 ticks in seconds from the first span.
  const span = t1 - t0;
  const step = [50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 30_000, 60_000, 120_000].find((s) => span / s <= 8) ?? 300_000;
  for (let t = 0; t <= span; t += step) {
    parts.push(`<line x1="${x(t0 + t).toFixed(1)}" y1="${TOP - 6}" x2="${x(t0 + t).toFixed(1)}" y2="${height - 10}" stroke="#e2e8f0"/>`);
    parts.push(`<text x="${x(t0 + t).toFixed(1)}" y="${TOP - 10}" text-anchor="middle" class="wf-tick">${fmtS(t)}</text>`);
  }
  spans.forEach((s, i) => {
    const y = TOP + i * ROW;
    const failed = s.error !== undefined;
    const settlement = SETTLEMENTS.has(s.name);
    const color = settlement ? COLOR.settlement : failed ? COLOR.error : COLOR[s.kind];
    const indent = 6 + Math.min(s.depth ?? 0, 6) * 12;
    const label =
      `<text x="${indent}" y="${y + 13}" class="wf-label">${esc(s.name)}${s.attempt !== undefined ? ` #${s.attempt}` : ""}` +
      ` <tspan class="wf-proc">${esc(s.process)}</tspan></text>`;
    const x1 = x(s.startMs);
    const shape = settlement
      ? `<path d="M${x1.toFixed(1)},${y + 3} l6,6 l-6,6 l-6,-6 z" fill="${color}"/>`
      : `<rect x="${x1.toFixed(1)}" y="${y + 3}" width="${Math.max(1.5, x(s.endMs) - x1).toFixed(1)}" height="${ROW - 6}" rx="2" fill="${color}"${failed ? ` stroke="${COLOR.error}"` : ""}/>`;
    parts.push(
      `<g class="span ${s.kind}${failed ? " failed" : ""}${settlement ? " settlement" : ""}" data-name="${esc(s.name)}" data-process="${esc(s.process)}">` +
        `<title>${esc(spanTitle(s))}</title>${label}${shape}</g>`,
    );
  });
  if (left > 0) parts.push(`<text x="6" y="${TOP + spans.length * ROW + 13}" class="wf-label wf-proc">… ${left} more spans not drawn</text>`);
  for (const k of ownKills) {
    const kx = x(k.atMs).toFixed(1);
    parts.push(
      `<g class="kill" data-worker="${esc(k.worker!)}"><title>${esc(k.label)}</title>` +
        `<line x1="${kx}" y1="${TOP - 4}" x2="${kx}" y2="${height - 10}" stroke="${COLOR.kill}" stroke-width="1.5" stroke-dasharray="5 3"/>` +
        `<text x="${kx}" y="${TOP - 22}" text-anchor="middle" class="wf-tick" fill="${COLOR.kill}">✕ ${esc(k.worker!)}</text></g>`,
    );
  }
  parts.push("</svg>");
  return parts.join("");
}
