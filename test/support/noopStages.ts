/**
 * Stages that do no external work: each moves the job one step forward. They exercise the
 * worker's claiming, leasing, routing and failure handling without any service behind them.
 */
import type { PipelineState } from "../../src/state-machine/table.ts";
import type { Stage, StageContext } from "../../src/worker/stage.ts";

const NEXT: Partial<Record<PipelineState, PipelineState>> = {
  uploaded: "parse_queued",
  parse_queued: "parsed",
  parsed: "parse_validated",
  parse_validated: "chunking",
  chunking: "chunks_stored",
  chunks_stored: "embedding_queued",
  embedding_queued: "embedding_in_progress",
  embedding_in_progress: "embeddings_stored",
  embeddings_stored: "complete",
};

export interface NoopHooks {
  /** Runs inside each stage before it moves the job (to record, delay or throw). */
  during?: (ctx: StageContext<unknown>) => Promise<void> | void;
}

export function noopStages(hooks: NoopHooks = {}): Stage<unknown>[] {
  return (Object.keys(NEXT) as PipelineState[]).map((state) => ({
    name: state,
    handles: [state],
    async run(ctx) {
      await hooks.during?.(ctx);
      await ctx.transition(NEXT[state]!, state === "parse_queued" ? { actor: "reconciler" } : {});
    },
  }));
}
