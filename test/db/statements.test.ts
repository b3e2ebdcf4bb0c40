import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { usePreparedStatements } from "../../src/db/statements.ts";
import { transition } from "../../src/state-machine/transition.ts";
import { claimNextJob } from "../../src/worker/queries.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { jobRow, seedJob } from "../support/fixtures.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());
afterEach(() => {
  usePreparedStatements("on", db.url);
});

/** Claim a job and move it one state on one connection; the names that connection has prepared. */
async function claimAndMoveOnOneConnection(): Promise<string[]> {
  await seedJob(db.pool);
  const client = await db.pool.connect();
  try {
    // A connection of its own, so statements prepared by earlier tests on pooled ones do not count.
    const claimed = await claimNextJob(client, { workerId: "w1", leaseSeconds: 60 });
    expect(claimed).toBeDefined();
    await transition(client, {
      jobId: claimed!.job_id,
      from: "uploaded",
      to: "parse_queued",
      actor: "worker",
      fence: { kind: "lease", token: claimed!.lease_token, workerId: "w1" },
    });
    expect((await jobRow(db.pool, claimed!.job_id)).status).toBe("parse_queued");
    const { rows } = await client.query<{ name: string }>("SELECT name FROM pg_prepared_statements ORDER BY name");
    return rows.map((r) => r.name);
  } finally {
    client.release(true);
  }
}

describe("the claim and the transition as named prepared statements", () => {
  it("are prepared on the connection that runs them when prepared statements are on", async () => {
    expect(usePreparedStatements("on", db.url)).toBe(true);
    expect(await claimAndMoveOnOneConnection()).toEqual(["upload_pipeline_claim_next_job", "upload_pipeline_transition"]);
  });

  it("are sent as plain text when DATABASE_PREPARED_STATEMENTS=off, and work the same", async () => {
    expect(usePreparedStatements("off", db.url)).toBe(false);
    expect(await claimAndMoveOnOneConnection()).toEqual([]);
  });

  it("auto turns them off for a transaction pooler (port 6543) and on elsewhere", () => {
    expect(usePreparedStatements("auto", "postgresql://postgres.ref:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres")).toBe(false);
    expect(usePreparedStatements("auto", "postgresql://postgres:pw@db.ref.supabase.co:5432/postgres")).toBe(true);
    expect(usePreparedStatements("auto", "postgresql://postgres:pw@localhost/postgres")).toBe(true);
  });
});
