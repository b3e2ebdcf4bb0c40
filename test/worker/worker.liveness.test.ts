import { spawn } from "node:child_process";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { reapDeadWorkers, registerWorker } from "../../src/worker/liveness.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { events, jobRow, seedJob } from "../support/fixtures.ts";
import { noopStages } from "../support/noopStages.ts";
import { testWorker } from "../support/worker.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

/** Place a live lease of `workerId` on the job, as a claim would. */
async function leaseTo(jobId: string, workerId: string): Promise<void> {
  await db.pool.query(
    `UPDATE upload_pipeline.upload_jobs SET locked_by = $2, lease_token = gen_random_uuid(),
        lease_expires_at = now() + interval '1 hour', attempts = 1 WHERE job_id = $1`,
    [jobId, workerId],
  );
}

async function session(): Promise<pg.Client> {
  const client = new pg.Client(db.url);
  await client.connect();
  return client;
}

describe("worker liveness", () => {
  it("a living worker's jobs are left alone; once its session ends they go back to the queue with the attempt still counted, and only they", async () => {
    const [job, neighbours] = [await seedJob(db.pool), await seedJob(db.pool)];
    const alive = await session();
    const neighbour = await session();
    await registerWorker(alive, "w-alive");
    await registerWorker(neighbour, "w-neighbour");
    await leaseTo(job.jobId, "w-alive");
    await leaseTo(neighbours.jobId, "w-neighbour");

    expect(await reapDeadWorkers(db.pool)).toEqual([]);
    expect((await jobRow(db.pool, job.jobId)).locked_by).toBe("w-alive");

    await alive.end();
    expect(await reapDeadWorkers(db.pool)).toEqual([{ job_id: job.jobId, locked_by: "w-alive" }]);
    expect(await jobRow(db.pool, job.jobId)).toMatchObject({ locked_by: null, lease_token: null, lease_expires_at: null, attempts: 1 });
    const { rows } = await db.pool.query("SELECT 1 FROM upload_pipeline.workers WHERE worker_id = 'w-alive'");
    expect(rows).toHaveLength(0);
    // The worker that is still alive keeps its job, until it dies in turn.
    expect((await jobRow(db.pool, neighbours.jobId)).locked_by).toBe("w-neighbour");
    await neighbour.end();
    expect(await reapDeadWorkers(db.pool)).toEqual([{ job_id: neighbours.jobId, locked_by: "w-neighbour" }]);
  });

  it("a dead worker's job is due at once, even one its holder had set due later while it kept the lease", async () => {
    const job = await seedJob(db.pool, { status: "parse_queued" });
    const gone = await session();
    await registerWorker(gone, "w-fetching");
    await leaseTo(job.jobId, "w-fetching");
    // As the submit stage leaves a job whose webhook came early: leased, due at the webhook deadline.
    await db.pool.query("UPDATE upload_pipeline.upload_jobs SET next_attempt_at = now() + interval '30 seconds' WHERE job_id = $1", [job.jobId]);
    await gone.end();

    expect(await reapDeadWorkers(db.pool)).toEqual([{ job_id: job.jobId, locked_by: "w-fetching" }]);
    const { rows } = await db.pool.query("SELECT next_attempt_at <= now() AS due FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.jobId]);
    expect(rows[0].due).toBe(true);
  });

  it("a registration made before the server's last start is not judged (a restart drops every lock)", async () => {
    const job = await seedJob(db.pool);
    const gone = await session();
    await registerWorker(gone, "w-before-restart");
    await leaseTo(job.jobId, "w-before-restart");
    await db.pool.query(
      "UPDATE upload_pipeline.workers SET registered_at = pg_postmaster_start_time() - interval '1 second' WHERE worker_id = 'w-before-restart'",
    );
    await gone.end();

    expect(await reapDeadWorkers(db.pool)).toEqual([]);
    expect((await jobRow(db.pool, job.jobId)).locked_by).toBe("w-before-restart");
  });

  it("a SIGKILLed worker's job is taken over in seconds, long before its 30 s lease would expire", async () => {
    // Its own database: the only job the killed worker can claim is this one.
    const own = await createTestDatabase();
    onTestFinished(() => own.drop());
    const job = await seedJob(own.pool);
    const child = spawn(process.execPath, ["test/worker/fixtures/slowWorker.ts"], {
      env: { ...process.env, DATABASE_URL: own.url, STEP_MS: "600000" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const started = new Promise<void>((resolve) => {
      let out = "";
      child.stdout.on("data", (b: Buffer) => {
        out += b.toString();
        if (out.includes("STEP_STARTED")) resolve();
      });
    });
    const killed = new Promise<NodeJS.Signals | null>((resolve) => child.on("exit", (_code, signal) => resolve(signal)));
    await started;
    const held = await jobRow(own.pool, job.jobId);
    expect(held.locked_by).toBe("slow");
    child.kill("SIGKILL");
    expect(await killed).toBe("SIGKILL");

    const completed = new Promise<void>((resolve) => {
      const survivor = testWorker(own.pool, noopStages(), {
        databaseUrl: own.url,
        workerId: "survivor",
        onJobDone: ({ outcome }) => outcome === "terminal" && void survivor.stop().then(resolve),
      });
      void survivor.start();
    });
    await completed;

    const row = await jobRow(own.pool, job.jobId);
    expect(row.status).toBe("complete");
    const { rows } = await own.pool.query<{ before_expiry: boolean }>(
      "SELECT max(at) < $2 AS before_expiry FROM upload_pipeline.job_events WHERE job_id = $1",
      [job.jobId, held.lease_expires_at],
    );
    expect(rows[0]!.before_expiry).toBe(true);
    const moves = await events(own.pool, job.jobId);
    expect(moves.slice(1).every((e) => e.worker_id === "survivor")).toBe(true);
  });
});
