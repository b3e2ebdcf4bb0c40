/**
 * Phases: outages stated in the scenario's own terms. The plan's decisions on a synthetic clock
 * (start on a job state, end only once every end condition holds, what a phase that never did
 * its work reports), the scenario schema's errors, and one real run in which the runner switches
 * an OpenAI outage on when the first job is ready to embed and off once it refused its calls.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, inject, it } from "vitest";
import { PhasePlan, PhaseSchema, type Phase } from "../../harness/phases.ts";
import { runScenario } from "../../harness/runner.ts";
import { parseScenario, type ScenarioFileError } from "../../harness/scenario.ts";

const phase = (p: unknown): Phase => PhaseSchema.parse(p);

describe("PhasePlan", () => {
  it("starts when enough jobs reached a state and ends only once both the time and the fault floor are met", () => {
    const plan = new PhasePlan({ down: phase({ start: { jobs: { reached: "chunks_stored", atLeast: 2 } }, end: { afterMs: 1000, faults: 5 } }) });
    // One job embedding, one still parsing: not yet (reached counts the state and every later one).
    expect(plan.step({ elapsedMs: 100, counts: { embedding_queued: 1, parse_queued: 3 }, faults: {} })).toEqual([]);
    expect(plan.step({ elapsedMs: 200, counts: { complete: 1, chunks_stored: 1 }, faults: {} })).toEqual([
      { name: "down", active: true, why: "2 job(s) reached chunks_stored" },
    ]);
    // Long enough but too few faults (a fast machine), then enough faults but too soon: still on.
    expect(plan.step({ elapsedMs: 5000, counts: {}, faults: { down: 4 } })).toEqual([]);
    const soon = new PhasePlan({ down: phase({ start: { afterMs: 0 }, end: { afterMs: 1000, faults: 5 } }) });
    soon.step({ elapsedMs: 0, counts: {}, faults: {} });
    expect(soon.step({ elapsedMs: 999, counts: {}, faults: { down: 50 } })).toEqual([]);
    expect(plan.step({ elapsedMs: 5100, counts: {}, faults: { down: 5 } })).toEqual([{ name: "down", active: false, why: "after 4.9 s, 5 faults injected" }]);
    expect(plan.pending).toBe(false);
    expect(plan.missed({ down: 5 })).toEqual([]);
  });

  it('"while n jobs are in a state": in + atLeast to start, in + atMost to end', () => {
    const plan = new PhasePlan({
      busy: phase({ start: { jobs: { in: ["embedding_in_progress"], atLeast: 3 } }, end: { jobs: { in: ["embedding_in_progress"], atMost: 2 } } }),
    });
    expect(plan.step({ elapsedMs: 0, counts: { embedding_in_progress: 2, complete: 5 }, faults: {} })).toEqual([]);
    expect(plan.step({ elapsedMs: 10, counts: { embedding_in_progress: 3 }, faults: {} }).map((s) => s.active)).toEqual([true]);
    expect(plan.step({ elapsedMs: 20, counts: { embedding_in_progress: 3 }, faults: {} })).toEqual([]);
    expect(plan.step({ elapsedMs: 30, counts: { embedding_in_progress: 1 }, faults: {} }).map((s) => s.active)).toEqual([false]);
  });

  it("names a phase that never started, and one whose fault floor was never met, so such a pass is not vacuous", () => {
    const plan = new PhasePlan({
      never: phase({ start: { jobs: { reached: "complete", atLeast: 9 } }, end: { afterMs: 10 } }),
      short: phase({ start: { afterMs: 0 }, end: { faults: 10 } }),
      timed: phase({ start: { afterMs: 0 }, end: { afterMs: 60_000 } }),
    });
    plan.step({ elapsedMs: 5, counts: { complete: 8 }, faults: {} });
    expect(plan.missed({ short: 3 })).toEqual([
      "phase never never started (9 job(s) reached complete)",
      "phase short injected only 3 of its 10 faults before the run was quiet",
    ]);
  });
});

describe("phases in a scenario file", () => {
  const problems = (extra: object): string[] => {
    try {
      parseScenario({ name: "p", description: "x", ...extra });
      return [];
    } catch (err) {
      return (err as ScenarioFileError).message.split("\n").slice(1);
    }
  };

  it("names an undefined phase, an unused one and each bad condition field", () => {
    expect(
      problems({
        faults: { openai: { outages: [{ fault: 503, phase: "opneai-down" }] } },
        phases: {
          "openai-down": { start: { jobs: { reached: "failed_parse", atLeast: 1 } }, end: {} },
          unused: { start: { faults: 3, jobs: { in: ["embedding_in_progress"] } }, end: { afterMs: 10 } },
        },
      }),
    ).toEqual([
      "  - phases.openai-down.start.jobs.reached: must be a pipeline state: uploaded, parse_queued, parsed, parse_validated, chunking, chunks_stored, embedding_queued, embedding_in_progress, embeddings_stored, complete",
      '  - phases.openai-down.end: give "afterMs", "faults" and/or "jobs" (the phase ends once every condition given holds)',
      '  - phases.unused.start.jobs: give either "atLeast" or "atMost" (a number of jobs)',
      '  - phases.unused.start: Unrecognized key: "faults"',
    ]);
    expect(
      problems({
        faults: { openai: { outages: [{ fault: 503, phase: "opneai-down" }] } },
        phases: { "openai-down": { start: { afterMs: 0 }, end: { faults: 3 } } },
      }),
    ).toEqual([
      '  - faults.openai.outages.0.phase: "opneai-down" is not defined in "phases"; defined: openai-down',
      '  - phases.openai-down: no fault rule names this phase: add "phase": "openai-down" to an outage, burst or error rule',
    ]);
  });
});

describe("a phase in a real run", () => {
  it("the runner switches the outage on when the first job is ready to embed and off once it refused its calls", async () => {
    const scenario = parseScenario({
      name: "phase-run",
      description: "an OpenAI outage from the first job ready to embed until it refused three calls",
      seed: 3,
      corpus: { documents: 3, minKiB: 2, maxKiB: 6 },
      workers: { processes: 2, slots: 1 },
      faults: { openai: { outages: [{ fault: 503, phase: "embed-down" }] } },
      phases: { "embed-down": { start: { jobs: { reached: "chunks_stored", atLeast: 1 } }, end: { faults: 3 } } },
    });
    const run = await runScenario(scenario, { serverUrl: inject("pgServerUrl"), logDir: mkdtempSync(join(tmpdir(), "phase-logs-")) });
    const { rows } = await run.pool.query<{ status: string }>("SELECT status FROM upload_pipeline.upload_jobs");
    await run.dropDatabase();
    expect(rows.map((r) => r.status)).toEqual(["complete", "complete", "complete"]);
    expect(run.timedOut, run.stuck.join("\n")).toBe(false);
    const started = run.events.indexOf("phase embed-down started: 1 job(s) reached chunks_stored");
    const ended = run.events.findIndex((e) => /^phase embed-down ended: after [\d.]+ s, [3-9] faults injected$/.test(e));
    expect(started).toBeGreaterThan(-1);
    expect(ended).toBeGreaterThan(started);
    expect(run.missed).toEqual([]);
    // Every refused call was the phase's outage on the embeddings route.
    expect(run.faultLog.length).toBeGreaterThanOrEqual(3);
    for (const line of run.faultLog) expect(line).toMatch(/^openai openai\.embeddings .* → 503 \(outage\)$/);
    expect(run.mockStats.openai.usage["text-embedding-3-small"]?.requests).toBeGreaterThanOrEqual(3);
  }, 180_000);
});
