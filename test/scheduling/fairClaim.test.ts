/**
 * Fair scheduling (migration 0006): the claim serves tenants by weighted fair share and the
 * interactive lane ahead of bulk, without starving bulk; the claim stays on its partial index
 * under a generic plan with many finished jobs.
 */
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { claimNextJob, CLAIM_NEXT_JOB_SQL } from "../../src/worker/queries.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { seedJob, type SeededJob } from "../support/fixtures.ts";

let db: TestDatabase;
beforeEach(async () => {
  db = await createTestDatabase();
});
afterEach(() => db.drop());

async function seedMany(n: number, opts: Parameters<typeof seedJob>[1]): Promise<SeededJob[]> {
  const out: SeededJob[] = [];
  for (let i = 0; i < n; i++) out.push(await seedJob(db.pool, opts)); // in upload order
  return out;
}

/** Claim `n` jobs (each stays leased) and name each by the group it belongs to. */
async function claimOrder(n: number, groups: Record<string, SeededJob[]>): Promise<string[]> {
  const owner = new Map(Object.entries(groups).flatMap(([name, jobs]) => jobs.map((j) => [j.jobId, name] as const)));
  const order: string[] = [];
  for (let i = 0; i < n; i++) {
    const job = await claimNextJob(db.pool, { workerId: "w", leaseSeconds: 60 });
    if (!job) break;
    order.push(owner.get(job.job_id) ?? "?");
  }
  return order;
}

describe("fair claim", () => {
  it("a tenant that uploads 3 after another's 40 is served within the next few claims, not after the backlog", async () => {
    const a = await seedMany(40, { userId: randomUUID() });
    const b = await seedMany(3, { userId: randomUUID() });
    const order = await claimOrder(43, { a, b });
    const lastB = order.lastIndexOf("b");
    // Fair share from the moment B arrives: its tags interleave with A's first ones.
    expect(lastB).toBeLessThan(7);
    expect(order.filter((o) => o === "b")).toHaveLength(3);
  });

  it("a tenant's weight is its share: weight 2 gets two claims for each of a weight-1 tenant", async () => {
    const heavy = randomUUID();
    await db.pool.query("INSERT INTO upload_pipeline.tenants (tenant_id, weight) VALUES ($1, 2)", [heavy]);
    const light = randomUUID();
    const h: SeededJob[] = [];
    const l: SeededJob[] = [];
    for (let i = 0; i < 20; i++) {
      h.push(await seedJob(db.pool, { userId: heavy }));
      l.push(await seedJob(db.pool, { userId: light }));
    }
    const order = await claimOrder(15, { h, l });
    expect(order.filter((o) => o === "h")).toHaveLength(10);
    expect(order.filter((o) => o === "l")).toHaveLength(5);
  });

  it("a service-role tenant_id, not the user, is the fair-share unit", async () => {
    const user = randomUUID();
    const org1 = await seedMany(10, { userId: user, tenantId: "org-1" });
    const org2 = await seedMany(2, { userId: user, tenantId: "org-2" });
    const { rows } = await db.pool.query("SELECT DISTINCT tenant_id FROM upload_pipeline.upload_jobs ORDER BY 1");
    expect(rows.map((r) => r.tenant_id)).toEqual(["org-1", "org-2"]);
    const order = await claimOrder(12, { org1, org2 });
    expect(order.lastIndexOf("org2")).toBeLessThan(5);
  });

  it("an interactive upload waits behind at most one bulk job, and bulk keeps a share under interactive load", async () => {
    const bulk = await seedMany(30, { userId: randomUUID(), lane: "bulk" });
    const interactive = await seedMany(1, { userId: randomUUID() });
    expect((await claimOrder(2, { bulk, interactive })).includes("interactive")).toBe(true);

    const moreInteractive = await seedMany(40, { userId: randomUUID() });
    const order = await claimOrder(25, { bulk, interactive: moreInteractive });
    // Lane weights 1 and 0.25: bulk gets one claim in five while interactive work is queued.
    expect(order.filter((o) => o === "bulk").length).toBeGreaterThanOrEqual(4);
    expect(order.filter((o) => o === "interactive").length).toBeGreaterThanOrEqual(15);
  });

  it("a repeated insert of the same job does not advance its tenant's flow", async () => {
    const user = randomUUID();
    const job = await seedJob(db.pool, { userId: user, content: "same bytes" });
    await seedJob(db.pool, { userId: user, content: "same bytes" });
    const { rows } = await db.pool.query("SELECT finish_tag FROM upload_pipeline.fair_flows WHERE tenant_id = $1", [user]);
    const { rows: jobs } = await db.pool.query("SELECT fair_tag FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.jobId]);
    expect(rows[0].finish_tag).toBe(jobs[0].fair_tag);
  });

  it("stays on upload_jobs_claim_idx under a generic plan with 50,000 complete jobs", async () => {
    // Bulk-load finished history without firing triggers (a fixture, not how jobs are made).
    await db.pool.query(`
      BEGIN;
      SET LOCAL session_replication_role = replica;
      INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime, bytes, file_sha256, raw_path)
        SELECT md5(i::text)::uuid, '00000000-0000-4000-8000-000000000001', 'd.md', 'text/markdown', 1, repeat('a', 64), 'x'
          FROM generate_series(1, 50000) i;
      INSERT INTO upload_pipeline.upload_jobs (job_id, document_id, status, correlation_id, tenant_id, fair_tag)
        SELECT md5('j' || i)::uuid, md5(i::text)::uuid, 'complete', gen_random_uuid(), 't', i
          FROM generate_series(1, 50000) i;
      COMMIT;
      ANALYZE upload_pipeline.upload_jobs;`);
    await seedMany(5, { userId: randomUUID() });
    const { rows } = await db.pool.query(`EXPLAIN (GENERIC_PLAN) ${CLAIM_NEXT_JOB_SQL}`);
    const plan = rows.map((r) => r["QUERY PLAN"]).join("\n");
    expect(plan).toMatch(/Index Scan using upload_jobs_claim_idx on upload_jobs/);
    expect(plan).not.toMatch(/Seq Scan on upload_jobs/);
    expect(plan).toMatch(/Index Cond: \(next_attempt_at <= COALESCE\(\$3, now\(\)\)\)/);
  });
});
