import type { BenchContext, BenchResult } from "./support.ts";
export async function runWebhookBench(_ctx: BenchContext): Promise<BenchResult> {
  throw new Error("not written yet");
}
