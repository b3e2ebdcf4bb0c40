/**
 * FAULT_POINTS is what scenario files are checked against, so it must be exactly the points the
 * worker passes: every literal `faults.hit("…")` in src/, and `stage.<name>.before|after` for
 * every pipeline stage.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PIPELINE_STAGES } from "../../src/stages/index.ts";
import { FAULT_POINTS, faultPointsFromEnv, parseCrashSpec } from "../../src/worker/faultPoints.ts";

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

describe("FAULT_POINTS", () => {
  it("lists exactly the points the worker passes", () => {
    const literal = new Set<string>();
    for (const file of sources("src")) {
      for (const m of readFileSync(file, "utf8").matchAll(/faults\.hit\(\s*"([a-z_.]+)"/g)) literal.add(m[1]!);
    }
    const stagePoints = PIPELINE_STAGES.flatMap((s) => [`stage.${s.name}.before`, `stage.${s.name}.after`]);
    expect(literal.size).toBeGreaterThan(20);
    expect([...FAULT_POINTS].sort()).toEqual([...new Set([...literal, ...stagePoints])].sort());
  });

  it("parses point[#n][@jobId] and refuses anything else", () => {
    expect(parseCrashSpec("commit.vectors.after#2@0b6f3c4e-6f1a-5b7e-9a41-0c2d8e6f7a10")).toEqual({
      point: "commit.vectors.after",
      nth: 2,
      jobId: "0b6f3c4e-6f1a-5b7e-9a41-0c2d8e6f7a10",
    });
    expect(parseCrashSpec("claim.after")).toEqual({ point: "claim.after", nth: 1, jobId: undefined });
    expect(parseCrashSpec("claim.after#0")).toBeUndefined();
    expect(parseCrashSpec("Claim.After")).toBeUndefined();
  });
});

describe("targeted crashes in a worker process", () => {
  it("stop every other slot at its next fault point while the first waits to kill the process; one at a targeted point dies there too", async () => {
    const onceDir = mkdtempSync(join(tmpdir(), "crash-once-"));
    const [jobA, jobB] = ["0b6f3c4e-6f1a-5b7e-9a41-0c2d8e6f7a10", "1c7a4d5f-7a2b-5c8f-8b52-1d3e9f7a8b21"];
    const specs = [`commit.vectors.after@${jobA}`, `commit.chunks.after@${jobB}`];
    try {
      // beforeCrash never settles here, so the process is never killed: the first crash stays in progress.
      const faults = faultPointsFromEnv(specs.join(","), undefined, onceDir, () => new Promise(() => {}));
      void faults.hit("commit.vectors.after", { jobId: jobA });
      await new Promise((resolve) => setImmediate(resolve));
      expect(readdirSync(onceDir)).toHaveLength(1); // the first crash claimed its marker

      // Another slot passes a point with no crash of its own meanwhile: it goes no further.
      let passed = false;
      void Promise.resolve(faults.hit("commit.embedding_queued.after", { jobId: jobB })).then(() => (passed = true));
      await new Promise((resolve) => setImmediate(resolve));
      expect(passed).toBe(false);
      expect(readdirSync(onceDir)).toHaveLength(1);

      // A slot reaching job B's targeted point meanwhile claims that crash (its line goes out
      // with the process's death) and goes no further either.
      let passedB = false;
      void Promise.resolve(faults.hit("commit.chunks.after", { jobId: jobB })).then(() => (passedB = true));
      await new Promise((resolve) => setImmediate(resolve));
      expect(passedB).toBe(false);
      expect(readdirSync(onceDir)).toHaveLength(2);
    } finally {
      rmSync(onceDir, { recursive: true, force: true });
    }
  });
});
