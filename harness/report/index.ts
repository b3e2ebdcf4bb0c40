/** The report folder (summary.json, report.md, report.html) and the end-of-run terminal table. */
export * from "./types.ts";
export { writeReport, type ReportFiles } from "./write.ts";
export { renderHtml } from "./html.ts";
export { renderMarkdown } from "./markdown.ts";
export { renderStateDiagram, renderLineChart, type ChartSeries, type LineChartOptions } from "./svg.ts";
export { renderWaterfall } from "./waterfall.ts";
export { formatResultsTable, type TableOptions } from "./table.ts";
export { formatDuration, formatRate, formatPercent, failureLines } from "./format.ts";
export { throughputSeries, seriesFromTimestamps, scalingCurve } from "./throughput.ts";
