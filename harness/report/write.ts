import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { renderHtml } from "./html.ts";
import { renderMarkdown } from "./markdown.ts";
import type { RunSummary } from "./types.ts";

export interface ReportFiles {
  summaryJson: string;
  reportMd: string;
  reportHtml: string;
}

/**
 * Write `summary.json`, `report.md` and `report.html` into `dir` (created if missing) and
 * return their paths.
 *
 * @example
 * const files = await writeReport("scenario-report", summary);
 * console.log(`report: ${files.reportHtml}`);
 */
export async function writeReport(dir: string, summary: RunSummary): Promise<ReportFiles> {
  await mkdir(dir, { recursive: true });
  const files: ReportFiles = {
    summaryJson: path.join(dir, "summary.json"),
    reportMd: path.join(dir, "report.md"),
    reportHtml: path.join(dir, "report.html"),
  };
  await Promise.all([
    writeFile(files.summaryJson, `${JSON.stringify(summary, null, 2)}\n`),
    writeFile(files.reportMd, renderMarkdown(summary)),
    writeFile(files.reportHtml, renderHtml(summary)),
  ]);
  return files;
}
