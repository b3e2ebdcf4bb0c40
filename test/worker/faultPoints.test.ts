/**
 * FAULT_POINTS is what scenario files are checked against, so it must be exactly the points the
 * worker passes: every literal `faults.hit("…")` in src/, and `stage.<name>.before|after` for
 * every pipeline stage.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PIPELINE_STAGES } from "../../src/stages/index.ts";
import { FAULT_POINTS, parseCrashSpec } from "../../src/worker/faultPoints.ts";

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
