/**
 * The heap trim (src/worker/heapTrim.ts): after a long stage a worker asks V8 for a
 * memory-reducing collection, which hands back the heap pages V8 pooled after a transient peak.
 */
import { spawn } from "node:child_process";
import { describe, expect, it, vi } from "vitest";
import { ManualClock } from "../../src/resilience/clock.ts";
import { heapTrimmer } from "../../src/worker/heapTrim.ts";
import { WORKER_NODE_FLAGS } from "../../src/worker/nodeFlags.ts";

describe("heap trim", () => {
  it("collects after a stage of at least a second, at most once per interval", async () => {
    const gc = vi.fn();
    const clock = new ManualClock(1_000_000);
    const trim = heapTrimmer({ gc, clock, minStageMs: 1_000, minIntervalMs: 30_000 });

    expect(trim.afterStage(999)).toBeUndefined(); // a short stage: nothing worth a collection
    expect(gc).not.toHaveBeenCalled();
    expect(trim.afterStage(1_000)).toEqual(expect.any(Number));
    expect(gc).toHaveBeenCalledExactlyOnceWith({ type: "major", execution: "sync", flavor: "last-resort" });

    await clock.advance(29_999);
    expect(trim.afterStage(5_000)).toBeUndefined(); // within the interval
    await clock.advance(1);
    expect(trim.afterStage(5_000)).toEqual(expect.any(Number));
    expect(gc).toHaveBeenCalledTimes(2);
  });

  it("does nothing in a process started without --expose-gc", () => {
    expect(heapTrimmer({ gc: undefined }).afterStage(60_000)).toBeUndefined();
  });

  it("returns the pages a plain full collection left in V8's pool (a real V8, with the worker's flags)", async () => {
    // A transient peak, then a plain full collection, which pools the pages it frees; then the
    // trim. --trace-gc prints the pool after every collection.
    const script = `
      import { heapTrimmer } from ${JSON.stringify(new URL("../../src/worker/heapTrim.ts", import.meta.url).href)};
      let peak = [];
      for (let i = 0; i < 600000; i++) peak.push({ i, s: "x" + i });
      peak = undefined;
      gc({ type: "major", execution: "sync" });
      console.log("trimming");
      console.log("trimmed in ms:", heapTrimmer().afterStage(1000));`;
    const child = spawn(process.execPath, [...WORKER_NODE_FLAGS, "--trace-gc", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    await new Promise((resolve) => child.once("exit", resolve));

    const [beforeTrim = "", trim = ""] = out.split(/^trimming$/m);
    const pooled = (text: string) => [...text.matchAll(/pooled: (\d+) MB/g)].map((m) => Number(m[1]));
    expect(pooled(beforeTrim).at(-1)).toBeGreaterThanOrEqual(10); // the plain collection pooled what it freed
    expect(trim).toMatch(/Mark-Compact \(reduce\)/); // a memory-reducing collection (gc exposed by the worker's flags)
    expect(trim).toMatch(/^trimmed in ms: \d+$/m);
    expect(pooled(trim).at(-1)).toBe(0);
  });
});
