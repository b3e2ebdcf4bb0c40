/**
 * Exact replay by seed (VOPR-style): the same scenario twice with the same seed, with random
 * faults on two services, duplicated webhooks and a kill of the worker holding one document's
 * job at a fault point, gives the identical fault log and final-database digest; another seed
 * gives different ones. (That a fault keyed by arrival order would break this is shown in
 * test/mocks/faults.test.ts, where the order is under the test's control.)
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, inject, it } from "vitest";
import { runScenario, type RunOutcome } from "../../harness/runner.ts";
import { parseScenario } from "../../harness/scenario.ts";

const scenario = (seed: number) =>
  parseScenario({
    name: "replay-check",
    description: "random faults, duplicated webhooks and a targeted kill, run twice",
    seed,
    corpus: { documents: 4, minKiB: 4, maxKiB: 10 },
    // One slot per process: a kill then interrupts only the job it targets (see harness/README.md).
    workers: { processes: 2, slots: 1 },
    faults: {
      openai: { errors: [{ fault: 500, rate: 0.3 }] },
      storage: { errors: [{ fault: 503, rate: 0.2, routes: ["storage.object.download"] }] },
      webhooks: { duplicate: { rate: 0.5 } },
    },
    crashes: [{ document: 1, at: "commit.vectors.after" }],
  });

async function run(seed: number): Promise<RunOutcome> {
  const outcome = await runScenario(scenario(seed), { serverUrl: inject("pgServerUrl"), logDir: mkdtempSync(join(tmpdir(), "replay-logs-")) });
  await outcome.dropDatabase();
  return outcome;
}

describe("replay by seed", () => {
  it("the same seed gives an identical fault log and database digest; another seed does not", async () => {
    const first = await run(11);
    expect(first.timedOut, first.stuck.join("\n")).toBe(false);
    // The faults and the kill really happened.
    expect(first.faultLog.length).toBeGreaterThan(0);
    expect(first.faultLog.some((l) => l.startsWith("openai "))).toBe(true);
    expect(first.events.some((e) => /killed at commit\.vectors\.after holding doc-1\.md's job/.test(e))).toBe(true);
    expect(first.missed).toEqual([]);

    const second = await run(11);
    expect(second.faultLog).toEqual(first.faultLog);
    expect(second.replay).toEqual(first.replay);

    const other = await run(12);
    expect(other.replay.faultLogDigest).not.toBe(first.replay.faultLogDigest);
    expect(other.replay.databaseDigest).not.toBe(first.replay.databaseDigest);
  }, 300_000);
});
