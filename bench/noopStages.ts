/**
 * Stages that call nothing: each moves the job one state forward, so the queue benchmark
 * measures the worker and the database (claim, fenced transition + its event row, release)
 * and nothing else. Nine transitions take a job from `uploaded` to `complete`.
 *
 * The same idea as `test/support/noopStages.ts`, kept here so benchmarks never import tests.
 */
import { NEXT_STATE, type PipelineState } from "../src/state-machine/table.ts";
import type { Stage } from "../src/worker/stage.ts";

/** Transitions from `uploaded` to `complete`. */
export const TRANSITIONS_PER_JOB = Object.keys(NEXT_STATE).length;

export interface NoopCounters {
  transitions: number;
  completed: number;
}

export function noopStages(counters: NoopCounters): Stage<undefined>[] {
  return (Object.keys(NEXT_STATE) as PipelineState[]).map((state) => ({
    name: state,
    handles: [state],
    async run(ctx) {
      const to = NEXT_STATE[state]!;
      // parse_queued → parsed belongs to the webhook handler or the reconciler, never the worker actor.
      await ctx.transition(to, state === "parse_queued" ? { actor: "reconciler" } : {});
      counters.transitions += 1;
      if (to === "complete") counters.completed += 1;
    },
  }));
}
