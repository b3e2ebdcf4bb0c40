/**
 * The worker's V8 flags (src/worker/nodeFlags.ts): whatever starts a worker passes them, and a
 * worker started without them says which are missing.
 */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { missingWorkerNodeFlags, WORKER_NODE_FLAGS } from "../../src/worker/nodeFlags.ts";

describe("worker node flags", () => {
  it("are found on the command line or in NODE_OPTIONS, and named when missing", () => {
    expect(missingWorkerNodeFlags([...WORKER_NODE_FLAGS], undefined)).toEqual([]);
    expect(missingWorkerNodeFlags([], `--trace-warnings ${WORKER_NODE_FLAGS.join(" ")}`)).toEqual([]);
    expect(missingWorkerNodeFlags(["--max-semi-space-size=64"], "")).toEqual([...WORKER_NODE_FLAGS]);
  });

  it("cap the young generation of the process they start", async () => {
    // What the flag is for: V8's new space stays within two 8 MiB semi-spaces however much is allocated.
    const script = `const v8 = require("node:v8"); const keep = [];
      for (let i = 0; i < 200; i++) { keep.push(Array.from({ length: 20000 }, (_, j) => ({ j }))); if (keep.length > 10) keep.shift(); }
      console.log(v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size);`;
    const newSpace = async (flags: readonly string[]) => {
      const child = spawn(process.execPath, [...flags, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout.on("data", (c: Buffer) => (out += c.toString()));
      await new Promise((resolve) => child.once("exit", resolve));
      return Number(out.trim()) / 2 ** 20;
    };
    expect(await newSpace(WORKER_NODE_FLAGS)).toBeLessThanOrEqual(16);
    // The same allocations grow a larger young generation when V8 may (its default on a machine
    // with 23 GiB was 64 MiB semi-spaces): the cap, not the workload, keeps it small.
    expect(await newSpace(["--max-semi-space-size=64"])).toBeGreaterThan(16);
  });
});
