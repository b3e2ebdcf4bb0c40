/**
 * The scenario run as an object: whatever fails part-way (here, the uploads), tear-down runs in
 * `finally`, so no worker process, mock server or database is left behind.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { describe, expect, inject, it } from "vitest";
import { runScenario } from "../../harness/runner.ts";
import { parseScenario } from "../../harness/scenario.ts";

/** Live child processes of this test process but `ps` itself (the runner spawns workers as its children). */
function children(): string[] {
  try {
    const lines = execFileSync("ps", ["-o", "pid=,comm=", "--ppid", String(process.pid)], { encoding: "utf8" }).split("\n");
    return lines.map((l) => l.trim()).filter((l) => l && !l.endsWith(" ps"));
  } catch {
    return []; // ps exits 1 when no process matches
  }
}

async function databasesNamed(prefix: string): Promise<string[]> {
  const client = new pg.Client(inject("pgServerUrl"));
  await client.connect();
  try {
    const { rows } = await client.query<{ datname: string }>("SELECT datname FROM pg_database WHERE datname LIKE $1", [`${prefix}%`]);
    return rows.map((r) => r.datname);
  } finally {
    await client.end();
  }
}

describe("runScenario", () => {
  it("tears everything down when the uploads throw: no worker process, no database left", async () => {
    const logDir = mkdtempSync(join(tmpdir(), "scn-logs-"));
    // The API refuses every markdown upload (415): the first upload throws after the workers started.
    const scenario = parseScenario({
      name: "upload-refused",
      description: "uploads are refused",
      corpus: { documents: 2 },
      workers: { processes: 2, slots: 1 },
      workerEnv: { UPLOAD_ALLOWED_MIME: "application/pdf" },
    });
    const before = children();
    await expect(runScenario(scenario, { serverUrl: inject("pgServerUrl"), logDir })).rejects.toThrow(/upload of doc-\d\.md failed: HTTP 415/);
    // The workers really ran (each said it started) before the failure…
    const logs = readdirSync(join(logDir, "upload-refused"));
    expect(logs.sort()).toEqual(["w0.1.log", "w1.1.log"]);
    for (const log of logs) expect(readFileSync(join(logDir, "upload-refused", log), "utf8")).toContain('"msg":"worker started"');
    // …and are gone now, with the run's database.
    expect(children().filter((pid) => !before.includes(pid))).toEqual([]);
    expect(await databasesNamed("scn_upload_refused_")).toEqual([]);
  }, 90_000);
});
