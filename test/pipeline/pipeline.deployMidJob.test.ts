/**
 * Issue 17 item 8, "a deploy that changes settings mid-job": a job begun by a worker with one
 * configuration and resumed by a worker with another (a rolling deploy) finishes with the
 * settings it began with, pinned on the job. A new job takes the active embedding profile's
 * settings (migration 0011), not the new worker's: after the first start, changing models or
 * chunk settings is a model migration (`npm run migrate-model`), never a silent mix.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { configForLocalMocks } from "../../src/config.ts";
import { createPipelineServices } from "../../src/services.ts";
import { FaultInjector } from "../../src/worker/faultPoints.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";
import { until } from "../support/until.ts";
import { systemClock, type Clock } from "../../src/resilience/clock.ts";

let env: PipelineEnv;
let offsetMs = 0;
const clock: Clock = { ...systemClock, now: () => Date.now() + offsetMs };

beforeAll(async () => {
  env = await startPipelineEnv({ seed: 18 });
});
afterAll(() => env.close());
beforeEach(() => {
  offsetMs = 0;
});

/** The new deploy: the same services with other settings (env has CHUNK 128/16, embeddings at 1536 dimensions). */
function redeployed(overrides: Record<string, string>) {
  return createPipelineServices(configForLocalMocks("http://mocks.test", { ...envOverrides(), ...overrides }));
}
function envOverrides(): Record<string, string> {
  const c = env.config;
  return {
    OPENAI_API_KEY: c.OPENAI_API_KEY,
    LLAMA_CLOUD_API_KEY: c.LLAMA_CLOUD_API_KEY,
    SUPABASE_SERVICE_ROLE_KEY: c.SUPABASE_SERVICE_ROLE_KEY,
    WEBHOOK_BASE_URL: c.WEBHOOK_BASE_URL,
    WEBHOOK_DEADLINE_SECONDS: "2",
    EMBED_BATCH_SIZE: "16",
  };
}

/** Run with `faults` until the first worker crashes at its point, then resume with `services` past the lease. */
async function crashThenResume(jobId: string, point: string, services: ReturnType<typeof redeployed>) {
  let crashed = false;
  const first = env.worker({
    clock,
    faults: new FaultInjector([{ point, action: "crash" }]),
    onJobDone: (e) => void (e.outcome === "crashed" && (crashed = true)),
  });
  await first.start();
  await until(`a crash at ${point}`, () => crashed, { timeoutMs: 20_000 });
  await first.stop();
  offsetMs = 120_000; // past the crashed worker's lease
  const second = env.worker({ clock, services });
  await second.start();
  try {
    return (await waitForTerminal(env, [jobId], 20_000)).get(jobId);
  } finally {
    await second.stop();
  }
}

const text = Array.from({ length: 30 }, (_, i) => `## Section ${i}\n\n${"The quick brown fox jumps over the lazy dog near the river bank. ".repeat(12)}`).join(
  "\n\n",
);

describe("a deploy that changes settings mid-job", () => {
  it("chunked under CHUNK_MAX_TOKENS=128/16, resumed by a worker with 512/64: finishes with 128-token chunks; a new job still takes the active profile's 128", async () => {
    const doc = await env.upload({ content: `# Chunk settings\n\n${text}` });
    const services = redeployed({ CHUNK_MAX_TOKENS: "512", CHUNK_OVERLAP_TOKENS: "64" });
    expect(await crashThenResume(doc.jobId, "commit.chunks.after", services)).toBe("complete");
    const sizes = await env.db.pool.query<{ n: number; max: number }>(
      "SELECT count(*)::int AS n, max(token_count)::int AS max FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1",
      [doc.documentId],
    );
    expect(sizes.rows[0]!.max).toBeLessThanOrEqual(128);
    const pinned = await env.db.pool.query("SELECT settings FROM upload_pipeline.upload_jobs WHERE job_id = $1", [doc.jobId]);
    expect(pinned.rows[0].settings).toMatchObject({ chunk_max_tokens: 128, chunk_overlap_tokens: 16 });

    const fresh = await env.upload({ content: `# Chunk settings, after the deploy\n\n${text}` });
    const worker = env.worker({ clock, services });
    await worker.start();
    try {
      expect((await waitForTerminal(env, [fresh.jobId], 20_000)).get(fresh.jobId)).toBe("complete");
    } finally {
      await worker.stop();
    }
    const after = await env.db.pool.query<{ max: number }>(
      "SELECT max(token_count)::int AS max FROM upload_pipeline.document_chunk_buffer WHERE document_id = $1",
      [fresh.documentId],
    );
    expect(after.rows[0]!.max).toBeLessThanOrEqual(128);
    const profile = await env.db.pool.query("SELECT settings->>'profile_id' AS profile FROM upload_pipeline.upload_jobs WHERE job_id = $1", [fresh.jobId]);
    expect(profile.rows[0].profile).toBe("default");
  });

  it("embedded at 1536 dimensions, resumed mid-embedding and finished by a worker with EMBED_DIMENSIONS=256: every vector at 1536, complete", async () => {
    const doc = await env.upload({ content: `# Embedding settings\n\n${text}` });
    const services = redeployed({ EMBED_DIMENSIONS: "256" });
    expect(services.settings.embedVersion).toBe("d256");
    expect(await crashThenResume(doc.jobId, "commit.vectors.after", services)).toBe("complete");
    const vectors = await env.db.pool.query<{ version: string; dims: number; n: number }>(
      `SELECT v.embed_version AS version, array_length(v.embedding, 1) AS dims, count(*)::int AS n
         FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
        WHERE c.document_id = $1 GROUP BY 1, 2`,
      [doc.documentId],
    );
    expect(vectors.rows).toHaveLength(1);
    expect(vectors.rows[0]).toMatchObject({ version: "d1536", dims: 1536 });
  });

  it("embedded by one configuration, finished by a worker with another model's dimensions: complete, not vectors_incomplete", async () => {
    const doc = await env.upload({ content: `# Finish settings\n\n${text.slice(0, 4000)}` });
    const services = redeployed({ EMBED_DIMENSIONS: "512" });
    expect(await crashThenResume(doc.jobId, "stage.finish.before", services)).toBe("complete");
  });
});
