import type { BenchContext, BenchResult } from "./support.ts";
export async function runMemoryBench(_ctx: BenchContext): Promise<BenchResult> {
  throw new Error("not written yet");
}
