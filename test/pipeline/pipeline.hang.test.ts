/**
 * Nothing hangs forever: a service that accepts a request and never answers (the mocks' `hang`
 * fault, held far longer than the test) costs one call timeout, not the job.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

const HOUR = 3_600_000;
let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({
    seed: 31,
    faults: {
      // The first call of each kind never answers (within the hour).
      storage: { bursts: [{ fault: "hang", start: 1, count: 1, of: "route", routes: ["storage.object.download"] }], hangMs: HOUR },
      llamaparse: { bursts: [{ fault: "hang", start: 1, count: 1, of: "route" }], hangMs: HOUR },
      openai: { bursts: [{ fault: "hang", start: 1, count: 1, of: "route" }], hangMs: HOUR },
    },
    env: { OPENAI_TIMEOUT_MS: "1000", LLAMAPARSE_TIMEOUT_MS: "1000", STORAGE_TIMEOUT_MS: "1000" },
  });
});
afterAll(() => env.close());

describe("nothing hangs forever", () => {
  it("a call that never answers on each service times out, the job is retried and completes", async () => {
    const rng = mulberry32(31);
    const docs = await Promise.all([0, 1].map((i) => env.upload({ content: markdownDocument(rng, `Hang ${i}`, 1_500), filename: `h${i}.md` })));
    const workers = [env.worker({ workerId: "hang-a", concurrency: 1 }), env.worker({ workerId: "hang-b", concurrency: 1 })];
    await Promise.all(workers.map((w) => w.start()));
    const states = await waitForTerminal(
      env,
      docs.map((d) => d.jobId),
      30_000,
    );
    expect([...states.values()]).toEqual(["complete", "complete"]);
    const requests = env.mocks.stats().requests;
    const hangs = (service: string) =>
      Object.entries(requests)
        .filter(([route]) => route.startsWith(`${service}.`))
        .reduce((n, [, byStatus]) => n + (byStatus.hang ?? 0), 0);
    // Each service really hung at least once (bursts count per request key).
    for (const service of ["storage", "llamaparse", "openai"]) expect(hangs(service), service).toBeGreaterThanOrEqual(1);
    const { rows } = await env.db.pool.query<{ code: string }>(
      "SELECT DISTINCT detail->>'code' AS code FROM upload_pipeline.job_events WHERE job_id = ANY($1) AND detail ? 'code'",
      [docs.map((d) => d.jobId)],
    );
    expect(rows.map((r) => r.code)).not.toContain("attempts_exhausted");
  });
});
