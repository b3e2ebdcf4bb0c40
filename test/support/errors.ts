import { expect } from "vitest";
import { PipelineError } from "../../src/errors.ts";

/** Await a promise that must reject with a `PipelineError`, and return that error. */
export async function rejectionOf(p: Promise<unknown>): Promise<PipelineError> {
  const err = await p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PipelineError);
  return err as PipelineError;
}
