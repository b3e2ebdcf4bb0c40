import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IllegalTransitionError, LeaseLostError, TransitionConflict } from "../../src/errors.ts";
import { ALL_STATES, EDGES, FAILURE_OF, findEdge, type Actor, type JobStatus } from "../../src/state-machine/table.ts";
import { retryFailedJob } from "../../src/state-machine/retry.ts";
import { transition, type Fence } from "../../src/state-machine/transition.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { events, jobRow, seedJob } from "../support/fixtures.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

/** Give a job a lease directly, as a claim would. */
async function lease(jobId: string): Promise<Fence & { kind: "lease" }> {
  const token = randomUUID();
  await db.pool.query(
    "UPDATE upload_pipeline.upload_jobs SET locked_by = 'w1', lease_token = $2, lease_expires_at = now() + interval '1 minute' WHERE job_id = $1",
    [jobId, token],
  );
  return { kind: "lease", token, workerId: "w1" };
}

const fenceFor = async (actor: Actor, jobId: string): Promise<Fence> => (actor === "worker" || actor === "reconciler" ? lease(jobId) : { kind: "unleased" });

describe("the state machine table", () => {
  it("has 13 states, and every non-terminal pipeline state has a failure edge and a way back", () => {
    expect(ALL_STATES).toHaveLength(13);
    for (const [from, failed] of Object.entries(FAILURE_OF)) {
      expect(findEdge(from as JobStatus, failed)?.kind).toBe("failure");
      // A failed parse is retried from the start: a new submission to LlamaParse.
      expect(findEdge(failed, failed === "failed_parse" ? "uploaded" : (from as JobStatus))?.kind).toBe("retry");
    }
    expect(findEdge("failed_parse", "parse_queued")).toBeUndefined();
    expect(findEdge("failed_parse", "parsed")).toBeUndefined();
  });
});

describe("transition()", () => {
  // Generated from the table: every legal (edge, actor) pair succeeds and writes exactly one event.
  const legal = EDGES.filter((e) => e.from !== null).flatMap((e) => e.actors.map((actor) => ({ ...e, actor })));
  it.each(legal.map((e) => [`${e.from} → ${e.to} by ${e.actor}`, e] as const))("allows %s", async (_name, edge) => {
    const job = await seedJob(db.pool, { status: edge.from! });
    const fence = await fenceFor(edge.actor, job.jobId);
    await transition(db.pool, { jobId: job.jobId, from: edge.from!, to: edge.to, actor: edge.actor, fence });
    expect((await jobRow(db.pool, job.jobId)).status).toBe(edge.to);
    const evs = await events(db.pool, job.jobId);
    expect(evs.at(-1)).toMatchObject({ from_status: edge.from, to_status: edge.to });
    expect(evs.at(-1)!.lease_token).toBe(fence.kind === "lease" ? fence.token : null);
  });

  // Generated from the table: every pair of states with no edge is refused and nothing is written.
  const illegal = ALL_STATES.flatMap((from) => ALL_STATES.filter((to) => !findEdge(from, to)).map((to) => [from, to] as const));
  it(`refuses every one of the ${illegal.length} illegal state pairs without writing`, async () => {
    for (const [from, to] of illegal) {
      const job = await seedJob(db.pool, { status: from });
      const fence = await lease(job.jobId);
      const before = await events(db.pool, job.jobId);
      await expect(transition(db.pool, { jobId: job.jobId, from, to, actor: "worker", fence })).rejects.toBeInstanceOf(IllegalTransitionError);
      expect((await jobRow(db.pool, job.jobId)).status).toBe(from);
      expect(await events(db.pool, job.jobId)).toEqual(before);
    }
  });

  it("refuses a legal edge taken by the wrong actor", async () => {
    const job = await seedJob(db.pool, { status: "parse_queued" });
    await expect(
      transition(db.pool, { jobId: job.jobId, from: "parse_queued", to: "parsed", actor: "operator", fence: { kind: "unleased" } }),
    ).rejects.toBeInstanceOf(IllegalTransitionError);
    const failed = await seedJob(db.pool, { status: "failed_parse" });
    await expect(
      transition(db.pool, { jobId: failed.jobId, from: "failed_parse", to: "uploaded", actor: "worker", fence: await lease(failed.jobId) }),
    ).rejects.toBeInstanceOf(IllegalTransitionError);
  });

  it("writes nothing when the lease token is stale", async () => {
    const job = await seedJob(db.pool, { status: "parsed" });
    const stale = await lease(job.jobId);
    await lease(job.jobId); // taken over: a new token
    const before = await jobRow(db.pool, job.jobId);
    await expect(transition(db.pool, { jobId: job.jobId, from: "parsed", to: "parse_validated", actor: "worker", fence: stale })).rejects.toBeInstanceOf(
      LeaseLostError,
    );
    expect(await jobRow(db.pool, job.jobId)).toEqual(before);
    expect((await events(db.pool, job.jobId)).map((e) => e.to_status)).toEqual(["uploaded"]);
  });

  it("writes nothing when the job is no longer in the expected state", async () => {
    const job = await seedJob(db.pool, { status: "chunking" });
    const fence = await lease(job.jobId);
    await expect(transition(db.pool, { jobId: job.jobId, from: "parsed", to: "parse_validated", actor: "worker", fence })).rejects.toBeInstanceOf(
      LeaseLostError,
    );
    expect((await jobRow(db.pool, job.jobId)).status).toBe("chunking");
  });

  it("refuses an unleased writer while a live lease exists", async () => {
    const job = await seedJob(db.pool, { status: "parse_queued" });
    await lease(job.jobId);
    await expect(
      transition(db.pool, { jobId: job.jobId, from: "parse_queued", to: "parsed", actor: "webhook", fence: { kind: "unleased" } }),
    ).rejects.toBeInstanceOf(TransitionConflict);
    expect((await jobRow(db.pool, job.jobId)).status).toBe("parse_queued");
  });

  it("records the first event as ∅ → uploaded and orders events causally", async () => {
    const job = await seedJob(db.pool);
    const fence = await lease(job.jobId);
    await transition(db.pool, { jobId: job.jobId, from: "uploaded", to: "parse_queued", actor: "worker", fence, parseJobId: "pj-1" });
    const evs = await events(db.pool, job.jobId);
    expect(evs.map((e) => [e.from_status, e.to_status])).toEqual([
      [null, "uploaded"],
      ["uploaded", "parse_queued"],
    ]);
    expect((await jobRow(db.pool, job.jobId)).parse_job_id).toBe("pj-1");
  });
});

describe("the operator's retry", () => {
  it("goes back to the state the job failed from the last time, not an earlier failure's", async () => {
    const job = await seedJob(db.pool, { status: "chunks_stored" });
    const move = async (from: JobStatus, to: JobStatus) =>
      transition(db.pool, { jobId: job.jobId, from, to, actor: "worker", fence: await lease(job.jobId), releaseLease: true });
    await move("chunks_stored", "failed_embedding");
    expect(await retryFailedJob(db.pool, { jobId: job.jobId, status: "failed_embedding", lastError: null }, "operator")).toMatchObject({ to: "chunks_stored" });
    await move("chunks_stored", "embedding_queued");
    await move("embedding_queued", "embedding_in_progress");
    await move("embedding_in_progress", "failed_embedding");
    expect(await retryFailedJob(db.pool, { jobId: job.jobId, status: "failed_embedding", lastError: null }, "operator")).toMatchObject({
      to: "embedding_in_progress",
    });
    expect((await jobRow(db.pool, job.jobId)).status).toBe("embedding_in_progress");
  });
});
