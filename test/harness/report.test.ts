/**
 * The report writers: summary.json round-trips, report.md lists failures and coverage, and
 * report.html is one self-contained page whose state diagram marks the exercised edges.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collectCoverage, computeCoverage } from "../../harness/coverage.ts";
import { checkInvariants } from "../../harness/invariants/index.ts";
import {
  formatResultsTable,
  renderHtml,
  renderLineChart,
  renderStateDiagram,
  scalingCurve,
  seriesFromTimestamps,
  throughputSeries,
  writeReport,
  type RunSummary,
  type ScenarioResult,
} from "../../harness/report/index.ts";
import { CARD_WIDTH_AT_1400, legendTextWidth } from "../../harness/report/svg.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { buildFinishedDatabase, dropQuietly } from "./finishedDatabase.ts";

let db: TestDatabase;
let summary: RunSummary;
let dir: string;

beforeAll(async () => {
  db = await createTestDatabase();
  const run = await buildFinishedDatabase(db.pool);
  const coverage = await collectCoverage(db.pool);
  const happy: ScenarioResult = {
    name: "happy-path",
    description: "three documents, one poison",
    passed: true,
    errors: [],
    figures: { documents: 3, workers: 2, durationMs: 4200, throughputDocsPerSec: 0.71, rateLimited429: 0, kills: 1, faults: { "openai.429": 3 } },
    invariants: await checkInvariants(db.pool, run.input),
    coverage,
    throughput: await throughputSeries(db.pool),
  };
  const broken: ScenarioResult = {
    name: "crash-<every>-stage",
    passed: false,
    errors: ["quiescence deadline passed with 1 job stuck"],
    figures: { documents: 3, workers: 4, durationMs: 61_000, throughputDocsPerSec: 12.5, rateLimited429: 17, kills: 9 },
    invariants: await checkInvariants(db.pool, { ...run.input, mockUsage: { promptTokensByModel: { [run.input.embed.model]: 1 } } }),
    coverage: computeCoverage([{ from_status: "chunking", to_status: "failed_chunking", actor: "worker" }]),
    throughput: seriesFromTimestamps(0, [100, 900, 1500, 4200], 1),
  };
  summary = {
    startedAt: "2030-01-01T00:00:00.000Z",
    finishedAt: "2030-01-01T00:01:05.200Z",
    durationMs: 65_200,
    seed: 42,
    passed: false,
    requiredCoverage: 100,
    coverage: computeCoverage([
      ...coverage.edges.flatMap((e) => Object.entries(e.byActor).map(([actor, count]) => ({ from_status: e.from, to_status: e.to, actor, count }))),
    ]),
    scenarios: [happy, broken],
    scaling: scalingCurve([
      { workers: 1, docsPerSecond: 2 },
      { workers: 2, docsPerSecond: 3.9 },
      { workers: 4, docsPerSecond: 7.6 },
      { workers: 8, docsPerSecond: 12 },
    ]),
    environment: { node: "v24.0.0", platform: "linux", cpus: 2 },
  };
  dir = await mkdtemp(path.join(tmpdir(), "report-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await dropQuietly(db);
});

describe("writeReport", () => {
  it("writes summary.json, report.md and report.html", async () => {
    const files = await writeReport(dir, summary);
    expect(JSON.parse(await readFile(files.summaryJson, "utf8"))).toEqual(summary);
    const md = await readFile(files.reportMd, "utf8");
    expect(md).toMatch(/^# Scenario run: FAIL/);
    expect(md).toContain("| happy-path | PASS | 3 | 2 |");
    expect(md).toContain("**tokens_and_cost_match_usage** (§8.4)");
    expect(md).toContain("quiescence deadline passed");
    expect(md).toContain("| 8 | 12.00 | 16.00 | 75% |");
    expect(md).toContain("Efficiency falls below 90% at 8 workers.");
    expect(md).toContain("`parsed → failed_parse`");
  });

  it("makes report.html self-contained, with the diagram marking exercised edges", async () => {
    const html = await readFile(path.join(dir, "report.html"), "utf8");
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).not.toMatch(/(src|href)\s*=\s*["']?\s*(https?:)?\/\//i);
    expect(html).not.toMatch(/<(script|link|img|iframe)\b/i);
    expect(html).not.toContain("http");
    expect(html).toContain('<svg class="state-diagram"');
    expect(html).toMatch(/class="edge exercised forward" data-edge="uploaded → parse_queued" data-count="3"/);
    expect(html).toMatch(/class="edge exercised failure" data-edge="parse_queued → failed_parse" data-count="1"/);
    expect(html).toMatch(/class="edge unexercised retry" data-edge="failed_parse → uploaded" data-count="0"/);
    expect(html).toContain("crash-&lt;every&gt;-stage");
    expect(html).toContain('data-series="linear ideal"');
    expect(html).toContain("Throughput over time");
  });
});

describe("the state diagram", () => {
  it("draws 13 states and every edge of the table", () => {
    const svg = renderStateDiagram(computeCoverage([]));
    expect(svg.match(/<g class="state/g)).toHaveLength(13);
    expect(svg.match(/class="edge /g)).toHaveLength(28);
    expect(svg).not.toContain("edge exercised");
  });
});

describe("report.html at a 1400 px window", () => {
  it("draws state names at 11 px or more, each line inside its box", () => {
    const svg = renderStateDiagram(computeCoverage([]));
    const viewWidth = Number(/viewBox="0 0 (\d+(?:\.\d+)?) /.exec(svg)![1]);
    const labelPx = Number(/\.state-label\{font:600 (\d+)px/.exec(svg)![1]);
    const scale = Math.min(1, CARD_WIDTH_AT_1400 / viewWidth);
    expect(labelPx * scale).toBeGreaterThanOrEqual(11);
    const boxes = [...svg.matchAll(/data-state="([a-z_]+)"><rect [^>]*width="(\d+)"[^>]*\/><text[^>]*>(.*?)<\/text>/g)];
    expect(boxes).toHaveLength(13);
    for (const [, state, width, text] of boxes) {
      const lines = [...text!.matchAll(/<tspan[^>]*>([^<]*)<\/tspan>/g)].map((m) => m[1]!);
      expect(lines.join("_"), state).toBe(state);
      // 0.62 em a character: a bold system-ui face's widest lower-case average.
      for (const line of lines) expect(line.length * 0.62 * labelPx, `${state}: ${line}`).toBeLessThanOrEqual(Number(width) - 8);
    }
  });

  it("keeps every legend entry of a throughput chart inside the chart, marks included", () => {
    const width = 600;
    const svg = renderLineChart({
      title: "openai-outage",
      xLabel: "s",
      yLabel: "jobs/s",
      width,
      series: [
        {
          name: "completed/s (1 s buckets) with a long name that used to run off",
          color: "#2563eb",
          points: [
            [0, 0],
            [10, 2],
          ],
        },
      ],
      marks: [
        { x: 3, kind: "kill", label: "kill w0.1", color: "#dc2626" },
        { x: 4, x2: 6, kind: "faults", label: "openai 503 +12", color: "#d97706" },
        { x: 5, kind: "restart", label: "restart w0.2", color: "#16a34a" },
      ],
    });
    const entries = [...svg.matchAll(/<text x="([\d.]+)" y="[\d.]+" class="tick legend-entry">([^<]*)<\/text>/g)];
    expect(entries.map((e) => e[2])).toEqual(["completed/s (1 s buckets) with a long name that used to run off", "kill", "faults", "restart"]);
    for (const [, x, text] of entries) expect(Number(x) + legendTextWidth(text!)).toBeLessThanOrEqual(width);
  });

  it("marks kills, restarts and fault bursts on the throughput chart's time axis", () => {
    const startedAt = "2030-01-01T00:00:00.000Z";
    const t0 = Date.parse(startedAt);
    const scenario: ScenarioResult = {
      name: "crash-mid-embed",
      seed: 7,
      passed: true,
      errors: [],
      figures: { documents: 4, workers: 2, durationMs: 9000, throughputDocsPerSec: 0.5, rateLimited429: 0, kills: 1 },
      invariants: null,
      coverage: null,
      throughput: { ...seriesFromTimestamps(t0, [t0 + 1500, t0 + 7200, t0 + 8100], 1), startedAt },
      timeline: [
        { kind: "faults", atMs: t0 + 2000, untilMs: t0 + 4000, label: "openai 503 +5" },
        { kind: "kill", atMs: t0 + 3500, label: "kill w1.1 at commit.vectors.after" },
        { kind: "restart", atMs: t0 + 4250, label: "restart w1.2" },
      ],
    };
    const html = renderHtml({ ...summary, seed: "per scenario", scenarios: [scenario] });
    expect(html).toMatch(/<g class="mark faults" data-x="2"><title>faults: openai 503 \+5<\/title><rect /);
    expect(html).toMatch(/<g class="mark kill" data-x="3\.5\d*"><title>kill: kill w1\.1 at commit\.vectors\.after<\/title><line /);
    expect(html).toMatch(/<g class="mark restart" data-x="4\.25"><title>restart: restart w1\.2<\/title><line /);
  });

  it("names the seeds the scenarios actually ran with", () => {
    const one = (name: string, seed: number): ScenarioResult => ({ ...summary.scenarios[0]!, name, seed });
    expect(renderHtml({ ...summary, seed: "per scenario", scenarios: [one("a", 7), one("b", 7)] })).toContain("· seed <code>7</code>");
    const mixed = renderHtml({ ...summary, seed: "per scenario", scenarios: [one("a", 7), one("b", 9)] });
    expect(mixed).toContain("· seeds a <code>7</code>, b <code>9</code>");
    expect(mixed).not.toContain("per scenario");
    expect(renderHtml({ ...summary, seed: 42 })).toContain("· seed <code>42</code>");
  });
});

describe("throughput and scaling", () => {
  it("buckets completions per second from the first event, keeping empty buckets", () => {
    const s = seriesFromTimestamps(1000, [1100, 1200, 3500], 1);
    expect(s.points).toEqual([
      { t: 1, completed: 2, perSecond: 2 },
      { t: 2, completed: 0, perSecond: 0 },
      { t: 3, completed: 1, perSecond: 1 },
    ]);
    expect(seriesFromTimestamps(0, [], 1).points).toEqual([]);
  });

  it("reads the series from job_events (two completes)", async () => {
    const s = await throughputSeries(db.pool);
    expect(s.points.reduce((n, p) => n + p.completed, 0)).toBe(2);
  });

  it("compares each size with the linear ideal", () => {
    const curve = scalingCurve([
      { workers: 2, docsPerSecond: 3.8 },
      { workers: 1, docsPerSecond: 2 },
    ]);
    expect(curve.points.map((p) => [p.workers, p.idealDocsPerSecond, Math.round(p.efficiencyPercent)])).toEqual([
      [1, 2, 100],
      [2, 4, 95],
    ]);
    expect(curve.saturatesAt).toBeNull();
  });
});

describe("formatResultsTable", () => {
  it("prints one aligned row per scenario and a total", () => {
    const table = formatResultsTable(summary);
    const lines = table.split("\n");
    expect(lines[0]).toMatch(/^scenario\s+result\s+docs\s+time\s+throughput\s+coverage$/);
    expect(lines[2]).toMatch(/^happy-path\s+PASS\s+3\s+4\.2 s\s+0\.71 docs\/s\s+40%$/);
    expect(lines[3]).toMatch(/^crash-<every>-stage\s+FAIL\s+3\s+1m 01s\s+12\.5 docs\/s\s+4%$/);
    expect(lines.at(-1)).toMatch(/^total\s+FAIL\s+6\s+1m 05s\s+40% \(≥ 100%\)$/);
    expect(new Set(lines.filter((l) => !l.startsWith("─")).map((l) => l.length)).size).toBe(1);
    expect(formatResultsTable(summary.scenarios, { color: true })).toContain("\u001b[32mPASS\u001b[0m");
  });
});
