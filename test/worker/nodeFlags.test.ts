/**
 * The worker's V8 flags (src/worker/nodeFlags.ts): whatever starts a worker passes them, and a
 * worker started without them says which are missing.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { missingWorkerNodeFlags, WORKER_COMPILE_CACHE, WORKER_MALLOC_MMAP_THRESHOLD, WORKER_NODE_FLAGS, workerNodeEnv } from "../../src/worker/nodeFlags.ts";

/** Runs node with `args` and `env`, and returns what it printed. */
async function nodeOutput(args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const child = spawn(process.execPath, args, { env, stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (c: Buffer) => (out += c.toString()));
  await new Promise((resolve) => child.once("exit", resolve));
  return out.trim();
}

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
    const newSpace = async (flags: readonly string[]) => Number(await nodeOutput([...flags, "-e", script])) / 2 ** 20;
    expect(await newSpace(WORKER_NODE_FLAGS)).toBeLessThanOrEqual(16);
    // The same allocations grow a larger young generation when V8 may (its default on a machine
    // with 23 GiB was 64 MiB semi-spaces): the cap, not the workload, keeps it small.
    expect(await newSpace(["--max-semi-space-size=64"])).toBeGreaterThan(16);
  });

  it("cap the heap at 512 MiB of old generation, so V8 collects before promoted garbage piles up", async () => {
    const limit = async (flags: readonly string[]) =>
      Number(await nodeOutput([...flags, "-e", 'console.log(require("node:v8").getHeapStatistics().heap_size_limit)'])) / 2 ** 20;
    // heap_size_limit is the old generation plus the young one (three 8 MiB semi-space halves).
    expect(await limit(WORKER_NODE_FLAGS)).toBeLessThanOrEqual(512 + 3 * 8);
    expect(await limit(["--max-old-space-size=1024"])).toBeGreaterThan(1024);
  });
});

describe("worker environment", () => {
  it("keeps the caller's NODE_COMPILE_CACHE, and otherwise names the one beside the dependencies", () => {
    expect(workerNodeEnv({ A: "1" })).toEqual({ A: "1", NODE_COMPILE_CACHE: WORKER_COMPILE_CACHE, MALLOC_MMAP_THRESHOLD_: WORKER_MALLOC_MMAP_THRESHOLD });
    expect(workerNodeEnv({ NODE_COMPILE_CACHE: "/elsewhere" }).NODE_COMPILE_CACHE).toBe("/elsewhere");
    expect(workerNodeEnv({ MALLOC_MMAP_THRESHOLD_: "131072" }).MALLOC_MMAP_THRESHOLD_).toBe("131072");
  });

  it("lets a second start of a TypeScript file skip the type stripper: the compile cache holds the stripped code", async () => {
    const dir = mkdtempSync(join(tmpdir(), "compile-cache-"));
    try {
      const entry = join(dir, "entry.ts");
      writeFileSync(entry, 'const stripper: string[] = process.moduleLoadList.filter((m) => m.includes("amaro"));\nconsole.log(stripper.length);\n');
      const env = { ...process.env, NODE_COMPILE_CACHE: join(dir, "cache") };
      expect(await nodeOutput([entry], env)).toBe("1"); // cold: amaro strips the types
      expect(await nodeOutput([entry], env)).toBe("0");
      const { NODE_COMPILE_CACHE: _, ...uncached } = env;
      expect(await nodeOutput([entry], uncached)).toBe("1");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("worker malloc threshold", () => {
  it("keeps large blocks out of glibc's main arena after a larger one was freed", async () => {
    // glibc raises its mmap threshold to the largest block freed; after a 9 MiB block, an 8 MiB
    // one comes from the main arena ([heap] grows by it) unless the threshold is fixed.
    const script = `const { readFileSync } = require("node:fs");
      const heapMiB = () => { const [a, b] = readFileSync("/proc/self/maps", "utf8").split("\\n").find((l) => l.endsWith("[heap]")).split(" ")[0].split("-");
        return (parseInt(b, 16) - parseInt(a, 16)) / 2 ** 20; };
      let block = Buffer.alloc(9 * 2 ** 20, 1); block = undefined; gc(); gc();
      const before = heapMiB(); const next = Buffer.alloc(8 * 2 ** 20, 1);
      console.log(heapMiB() - before); next.fill(0);`;
    const arenaGrowth = async (env: NodeJS.ProcessEnv) => Number(await nodeOutput([...WORKER_NODE_FLAGS, "-e", script], env));
    const { MALLOC_MMAP_THRESHOLD_: _, ...withoutThreshold } = process.env;
    expect(await arenaGrowth(withoutThreshold)).toBeGreaterThanOrEqual(7);
    expect(await arenaGrowth(workerNodeEnv(withoutThreshold))).toBeLessThan(1);
  });
});
