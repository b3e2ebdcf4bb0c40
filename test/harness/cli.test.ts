/**
 * `npm run scenario` as its users call it: exit 0 on success, 1 on a violated invariant or
 * coverage below the requirement (naming what broke), 2 for a bad flag or scenario file.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadEnvFile } from "../../harness/envFile.ts";
import { loadScenarioFile, loadSuite, SuiteError } from "../../harness/scenario.ts";

function scenario(...args: string[]) {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.DATABASE_URL;
  return spawnSync(process.execPath, ["harness/main.ts", ...args], { encoding: "utf8", env, timeout: 200_000 });
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

  it("checks fault points, worker settings and crash forms before anything starts: exit 2 naming the field and the valid values", () => {
    const dir = mkdtempSync(join(tmpdir(), "scn-"));
    const file = join(dir, "typos.json");
    writeFileSync(
      file,
      JSON.stringify({
        name: "typos",
        description: "every mistake a new user makes",
        crashPoints: ["commit.vector.after#2"],
        workerEnv: { EMBED_BATCH_SIZE: "9999", EMBED_BATCH: "8" },
        crashes: [{}, { document: 0 }],
        faults: { openai: { bursts: [{ fault: 418, start: 1, count: 1 }] } },
      }),
    );
    const started = Date.now();
    const result = scenario(file);
    expect(result.status).toBe(2);
    expect(result.stderr).toMatch(/crashPoints\.0: must be a fault point the worker defines.*commit\.vectors\.after/);
    expect(result.stderr).toMatch(/workerEnv\.EMBED_BATCH_SIZE: is invalid; expected/);
    expect(result.stderr).toMatch(/workerEnv\.EMBED_BATCH: not a worker setting the scenario may set; valid: .*EMBED_BATCH_SIZE/);
    expect(result.stderr).toMatch(/crashes\.0: give exactly one form: \{"atMs"/);
    expect(result.stderr).toContain("crashes.1.at: document and at go together");
    expect(result.stderr).toMatch(
      /faults\.openai\.bursts\.0\.fault: must be one of 429, 500, 502, 503, 504, "insufficient_quota", "reset", "hang", "malformed"/,
    );
    expect(result.stderr).not.toContain("Invalid input");
    // Refused before PostgreSQL or any worker started.
    expect(result.stdout).not.toContain("PostgreSQL:");
    expect(Date.now() - started).toBeLessThan(60_000);
  });

  it("refuses a targeted crash on a document the corpus does not have, before anything starts", () => {
    const dir = mkdtempSync(join(tmpdir(), "scn-"));
    const file = join(dir, "far-document.json");
    writeFileSync(
      file,
      JSON.stringify({ name: "far-document", description: "x", corpus: { documents: 3 }, crashes: [{ document: 7, at: "commit.vectors.after" }] }),
    );
    const result = scenario(file);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("crashes.0.document: 7 is not in the corpus; give an index 0..2 or one of doc-0.md, doc-1.md, doc-2.md");
    expect(result.stdout).not.toContain("PostgreSQL:");
  });

  it("--replay runs a report's scenarios again and says the fault log and final database are identical", () => {
    const first = mkdtempSync(join(tmpdir(), "scn-report-"));
    const run = scenario("test/harness/fixtures/replay-small.json", "--report", first);
    expect(run.status, run.stderr).toBe(0);
    const recorded = JSON.parse(readFileSync(join(first, "summary.json"), "utf8")) as {
      scenarios: Array<{ replay: { faults: number; faultLogDigest: string }; replayCommand: string }>;
    };
    expect(recorded.scenarios[0]!.replay.faults).toBeGreaterThan(0);
    expect(recorded.scenarios[0]!.replayCommand).toBe(`npm run scenario -- --replay ${join(first, "summary.json")}`);
    expect(readFileSync(join(first, "faults", "replay-small.log"), "utf8")).toContain("webhooks ");

    const again = mkdtempSync(join(tmpdir(), "scn-report-"));
    const replay = scenario("--replay", join(first, "summary.json"), "--report", again);
    expect(replay.status, replay.stderr).toBe(0);
    expect(replay.stdout).toMatch(/replay of replay-small: identical fault log \(\d+ faults\) and final database/);
    const replayed = JSON.parse(readFileSync(join(again, "summary.json"), "utf8")) as typeof recorded;
    expect(replayed.scenarios[0]!.replay).toEqual(recorded.scenarios[0]!.replay);
  }, 240_000);

  it("init writes a starter scenario and env file that load and validate, and never overwrites them", async () => {
    const dir = mkdtempSync(join(tmpdir(), "scn-init-"));
    const result = scenario("init", dir);
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toContain(`--env-file ${join(dir, "scenario.env")}`);
    const starter = await loadScenarioFile(join(dir, "my-scenario.json"));
    expect(starter.crashes).toEqual([{ document: 0, at: "commit.vectors.after" }]);
    const { env } = await loadEnvFile(join(dir, "scenario.env"));
    expect(env).toMatchObject({ EMBED_MODEL: "text-embedding-3-small", MAX_ATTEMPTS: "5" });
    const again = scenario("init", dir);
    expect(again.status).toBe(2);
    expect(again.stderr).toContain("my-scenario.json already exists");
  });

  it("--env-file and corpus.files are checked before anything starts, naming the variable or the file (values never printed)", () => {
    const dir = mkdtempSync(join(tmpdir(), "scn-env-"));
    const env = join(dir, "team.env");
    writeFileSync(env, "# ours\nOPENAI_API_KEY=sk-live-secret-value\nEMBED_BATCH_SIZE=9999\nEMBED_BATCHES=4\n");
    const bad = scenario("happy-path", "--env-file", env);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/EMBED_BATCH_SIZE: is invalid; expected/);
    expect(bad.stderr).toMatch(/EMBED_BATCHES: not a worker or API setting; valid: .*EMBED_BATCH_SIZE/);
    expect(bad.stderr + bad.stdout).not.toContain("sk-live-secret-value");
    // Refused before PostgreSQL or any worker started, as a user mistake: no stack trace.
    expect(bad.stdout).not.toContain("PostgreSQL:");
    expect(bad.stderr).not.toMatch(/\n\s+at /);

    mkdirSync(join(dir, "samples"));
    writeFileSync(join(dir, "samples", "notes.xlsx"), "not a supported type");
    writeFileSync(join(dir, "own-files.json"), JSON.stringify({ name: "own-files", description: "x", corpus: { files: "./samples" } }));
    const files = scenario(join(dir, "own-files.json"));
    expect(files.status).toBe(2);
    expect(files.stderr).toMatch(/corpus\.files: .*notes\.xlsx is not of a supported type \(\.pdf, \.docx, \.html/);
    expect(files.stdout).not.toContain("PostgreSQL:");
  });

  it("soak runs seeded rounds and reports rounds, kills and restarts, with the seed", () => {
    const report = mkdtempSync(join(tmpdir(), "scn-soak-"));
    const result = scenario("soak", "--rounds", "1", "--seed", "7", "--report", report);
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toContain("soak: seed 7");
    expect(result.stdout).toMatch(/soak: 1 round\(s\) in [\d.]+ min, \d+ kills, \d+ PostgreSQL restarts, \d+ injected faults/);
    expect(result.stdout).toContain("no violation (seed 7)");
    const summary = JSON.parse(readFileSync(join(report, "summary.json"), "utf8")) as {
      seed: number;
      scenarios: Array<{ name: string; definition: { seed: number } }>;
    };
    expect(summary.seed).toBe(7);
    expect(summary.scenarios[0]!.name).toBe("soak-7-0");
  }, 240_000);

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
