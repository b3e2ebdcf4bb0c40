/**
 * `npm run scenario` as its users call it: exit 0 on success, 1 on a violated invariant or
 * coverage below the requirement (naming what broke), 2 for a bad flag or scenario file.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadSuite, SuiteError } from "../../harness/scenario.ts";

function scenario(...args: string[]) {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.DATABASE_URL;
  return spawnSync(process.execPath, ["harness/main.ts", ...args], { encoding: "utf8", env, timeout: 120_000 });
}

describe("npm run scenario", () => {
  it("--list names every built-in scenario", () => {
    const result = scenario("--list");
    expect(result.status).toBe(0);
    for (const name of ["happy-path", "crash-every-stage", "webhook-chaos", "multi-worker-scaling"]) expect(result.stdout).toContain(name);
  });

  it("refuses a bad flag or an unknown scenario with exit 2 and the reason", () => {
    const bad = scenario("--workers", "zero");
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--workers: .*number/);
    const unknown = scenario("no-such-scenario");
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('no scenario named "no-such-scenario"');
  });

  it("--suite picks the folder: an unknown suite and a suite with no files are exit-2 errors naming the fix", () => {
    const unknown = scenario("--suite", "no-such-suite", "--list");
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('no suite named "no-such-suite"');
    expect(unknown.stderr).toContain("production");
    expect(unknown.stderr).not.toMatch(/\n\s+at /);
    const notInSuite = scenario("--suite", "default", "no-such-scenario");
    expect(notInSuite.stderr).toContain("in the default suite");
  });

  it("loadSuite reads scenarios/<suite>/*.json, and refuses an empty suite", async () => {
    const root = mkdtempSync(join(tmpdir(), "suites-"));
    mkdirSync(join(root, "production"));
    await expect(loadSuite("production", root)).rejects.toThrow(SuiteError);
    await expect(loadSuite("production", root)).rejects.toThrow(/has no scenario files: add a <name>.json/);
    writeFileSync(join(root, "production", "long-run.json"), JSON.stringify({ name: "long-run", description: "a long one" }));
    writeFileSync(join(root, "short.json"), JSON.stringify({ name: "short", description: "a short one" }));
    expect((await loadSuite("production", root)).map((s) => s.name)).toEqual(["long-run"]);
    expect((await loadSuite("default", root)).map((s) => s.name)).toEqual(["short"]);
  });

  it("refuses an invalid scenario file with exit 2, naming the field", () => {
    const dir = mkdtempSync(join(tmpdir(), "scn-"));
    const file = join(dir, "broken.json");
    writeFileSync(file, JSON.stringify({ name: "broken", description: "x", workers: { processes: 0 }, expect: { documents: "parsed" } }));
    const result = scenario(file);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("workers.processes");
    expect(result.stderr).toContain("expect.documents: must be a terminal state");
    expect(result.stderr).not.toMatch(/\n\s+at /);
  });

  it("exits 1 naming the violated invariant and the unmet coverage, and still writes the report", () => {
    const report = mkdtempSync(join(tmpdir(), "scn-report-"));
    const result = scenario("test/harness/fixtures/wrong-expectation.json", "--require-coverage", "100", "--report", report);
    expect(result.status, result.stderr).toBe(1);
    expect(result.stdout).toContain("✘ jobs_terminal_as_expected");
    expect(result.stdout).toMatch(/ended in complete, expected failed_parse/);
    expect(result.stdout).toContain("FAIL: coverage below the required 100%");
    expect(result.stdout).toContain(join(report, "report.html"));
  }, 120_000); // a real scenario run (reference + scenario, worker processes): as long as the spawn may take
});
