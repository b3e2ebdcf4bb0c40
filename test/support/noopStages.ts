/**
 * Stages that do no external work: each moves the job one step forward. They exercise the
 * worker's claiming, leasing, routing and failure handling without any service behind them.
 */
import { NEXT_STATE, type PipelineState } from "../../src/state-machine/table.ts";
import type { Stage, StageContext } from "../../src/worker/stage.ts";

export interface NoopHooks {
  /** Runs inside each stage before it moves the job (to record, delay or throw). */
  during?: (ctx: StageContext<unknown>) => Promise<void> | void;
}

export function noopStages(hooks: NoopHooks = {}): Stage<unknown>[] {
  return (Object.keys(NEXT_STATE) as PipelineState[]).map((state) => ({
    name: state,
    handles: [state],
    async run(ctx) {
      await hooks.during?.(ctx);
      await ctx.transition(NEXT_STATE[state]!, state === "parse_queued" ? { actor: "reconciler" } : {});
    },
  }));
}
