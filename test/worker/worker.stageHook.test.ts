/**
 * `onStageDone`: the worker reports every stage that moved its job, with how long it ran (what
 * the process's heap trim keys on, src/worker/heapTrim.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NEXT_STATE } from "../../src/state-machine/table.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { seedJob } from "../support/fixtures.ts";
import { noopStages } from "../support/noopStages.ts";
import { testWorker } from "../support/worker.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

describe("the stage hook", () => {
  it("is called once per stage that moved the job, in order, with the stage's duration", async () => {
    await seedJob(db.pool);
    const done: Array<{ stage: string; durationMs: number }> = [];
    const stages = noopStages({
      during: async (ctx) => {
        if (ctx.job.status === "chunking") await new Promise((resolve) => setTimeout(resolve, 30));
      },
    });
    const worker = testWorker(db.pool, stages, { onStageDone: ({ stage, durationMs }) => void done.push({ stage, durationMs }) });

    await worker.runOnce();

    expect(done.map((d) => d.stage)).toEqual(Object.keys(NEXT_STATE));
    expect(done.find((d) => d.stage === "chunking")!.durationMs).toBeGreaterThanOrEqual(29);
  });
});
