/**
 * The soak's rounds: a pure function of (seed, round), valid scenarios, and over a stretch of
 * rounds every kind of trouble shows up (targeted kills at points every job passes, 429 storms,
 * outages, webhook chaos, PostgreSQL restarts).
 */
import { describe, expect, it } from "vitest";
import { drawScenario, isViolation, KILL_POINTS } from "../../harness/soak.ts";

describe("soak rounds", () => {
  it("are drawn from the seed stream: the same (seed, round) gives the same scenario, another round another", () => {
    expect(drawScenario(7, 3, { postgresRestarts: true })).toEqual(drawScenario(7, 3, { postgresRestarts: true }));
    expect(drawScenario(7, 4, { postgresRestarts: true })).not.toEqual(drawScenario(7, 3, { postgresRestarts: true }));
    expect(drawScenario(8, 3, { postgresRestarts: true }).seed).not.toBe(drawScenario(7, 3, { postgresRestarts: true }).seed);
  });

  it("cover kills, storms, outages, webhook chaos and restarts within 40 rounds, and restarts only when asked", () => {
    const rounds = Array.from({ length: 40 }, (_, i) => drawScenario(1, i, { postgresRestarts: true }));
    expect(rounds.some((s) => s.crashes.length > 0)).toBe(true);
    expect(rounds.some((s) => (s.faults.openai?.bursts ?? []).some((b) => b.fault === 429))).toBe(true);
    expect(rounds.some((s) => (s.faults.openai?.outages ?? []).length > 0)).toBe(true);
    // Outages are phases of the run (from when a job can be embedded), not wall-clock windows.
    for (const s of rounds)
      for (const o of s.faults.openai?.outages ?? []) expect(s.phases[o.phase ?? "(a window)"]?.start.jobs?.reached).toBe("chunks_stored");
    expect(rounds.some((s) => s.faults.webhooks?.forge !== undefined)).toBe(true);
    expect(rounds.some((s) => s.postgresRestartAtMs !== undefined)).toBe(true);
    for (const s of rounds) for (const c of s.crashes) if ("at" in c) expect(KILL_POINTS).toContain(c.at);
    const noRestarts = Array.from({ length: 40 }, (_, i) => drawScenario(1, i, { postgresRestarts: false }));
    expect(noRestarts.every((s) => s.postgresRestartAtMs === undefined)).toBe(true);
  });

  it("kill only at points a worker passes for every job (parse intake runs in the API's webhook handler)", () => {
    expect(KILL_POINTS).toContain("commit.vectors.after");
    expect(KILL_POINTS).not.toContain("call.llamaparse.get.before");
    expect(KILL_POINTS).not.toContain("stage.reconcile_parse.before");
    expect(KILL_POINTS).not.toContain("call.openai.batches.create.after"); // bulk jobs only
  });

  it("stop on a broken invariant, a stuck job or a targeted kill that never came, not on what the clock decided", () => {
    const clock = ["the PostgreSQL restart never happened: the run was quiet first"];
    expect(isViolation({ invariants: { ok: true }, errors: [] }, [])).toBe(false);
    expect(isViolation({ invariants: { ok: true }, errors: clock }, clock)).toBe(false);
    expect(isViolation({ invariants: { ok: false }, errors: [] }, [])).toBe(true);
    expect(isViolation({ invariants: { ok: true }, errors: ["not quiet within 180000 ms"] }, [])).toBe(true);
    const untested = "the kill of the worker holding doc-3.md's job at commit.vectors.after never happened";
    expect(isViolation({ invariants: { ok: true }, errors: [...clock, untested] }, clock)).toBe(true);
  });
});
