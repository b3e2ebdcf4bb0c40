/**
 * The whole flow over real HTTP between real parts: a user uploads through the API, a worker
 * submits to the LlamaParse mock (served over HTTP), the mock calls the API's webhook, and the
 * job runs to `complete`, all visible through GET /jobs/{id}.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildWiredApp } from "../../src/api/wiring.ts";
import { configForLocalMocks } from "../../src/config.ts";
import { createLogger } from "../../src/logger.ts";
import { createPipelineServices } from "../../src/services.ts";
import { PIPELINE_STAGES } from "../../src/stages/index.ts";
import { PIPELINE_STATES } from "../../src/state-machine/table.ts";
import { BaseWorker } from "../../src/worker/BaseWorker.ts";
import type { PipelineServices } from "../../src/stages/services.ts";
import { startMockServer, type MockServer } from "../../mocks/server.ts";
import { ApiClient } from "../../harness/api.ts";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { until } from "../support/until.ts";

let db: TestDatabase;
let mocks: MockServer;
let app: Awaited<ReturnType<typeof buildWiredApp>>;
let worker: BaseWorker<PipelineServices>;
let api: ApiClient;

beforeAll(async () => {
  db = await createTestDatabase();
  mocks = await startMockServer({ seed: 3 });
  const log = createLogger({ level: "silent" });
  const base = { ...mocks.env, SUPABASE_JWT_SECRET: mocks.mocks.keys.jwtSecret, DATABASE_URL: db.url };
  app = await buildWiredApp({ pool: db.pool, config: configForLocalMocks(mocks.baseUrl, base), log });
  const apiUrl = await app.listen({ port: 0, host: "127.0.0.1" });
  api = new ApiClient(apiUrl, mocks.mocks.keys.jwtSecret);
  const config = configForLocalMocks(mocks.baseUrl, {
    ...base,
    WEBHOOK_BASE_URL: apiUrl,
    CHUNK_MAX_TOKENS: "128",
    CHUNK_OVERLAP_TOKENS: "16",
    EMBED_BATCH_SIZE: "8",
  });
  worker = new BaseWorker({
    pool: db.pool,
    databaseUrl: db.url,
    stages: PIPELINE_STAGES,
    services: createPipelineServices(config),
    log,
    concurrency: 2,
    leaseSeconds: 30,
    retryBaseMs: 50,
    retryMaxMs: 500,
    pollIntervalMs: 100,
  });
  await worker.start();
});

afterAll(async () => {
  await worker.stop();
  await app.close();
  await mocks.close();
  await db.drop();
});

describe("upload → LlamaParse → webhook → chunks → embeddings → complete, over HTTP", () => {
  it("shows the job's progress and timeline through GET /jobs/{id}", async () => {
    const userId = "7d3f1c2a-9b8e-4c6d-a5f4-3e2d1c0b9a87";
    const bytes = new TextEncoder().encode(markdownDocument(mulberry32(9), "Flow", 6_000));
    const { documentId, status } = await api.upload({ kind: "document", userId, filename: "flow.md", mime: "text/markdown", bytes });
    expect(status).toBe(201);

    const headers = { authorization: `Bearer ${await api.token(userId)}` };
    let body:
      | {
          status: string;
          progress: { chunks: { stored: number }; vectors: { stored: number; percent: number } };
          timeline: Array<{ from: string | null; to: string; actor: string }>;
          cost: { tokens: number };
        }
      | undefined;
    await until(
      "the upload to complete",
      async () => {
        const res = await fetch(`${api.baseUrl}/jobs/${documentId}`, { headers });
        expect(res.status).toBe(200);
        body = (await res.json()) as typeof body;
        return body!.status === "complete";
      },
      { timeoutMs: 20_000, everyMs: 100 },
    );
    expect(body!.status).toBe("complete");
    expect(body!.progress.chunks.stored).toBeGreaterThan(1);
    expect(body!.progress.vectors).toMatchObject({ stored: body!.progress.chunks.stored, percent: 100 });
    expect(body!.cost.tokens).toBeGreaterThan(0);
    expect(body!.timeline.map((e) => e.to)).toEqual([...PIPELINE_STATES]);
    // LlamaParse's signed webhook came through the API and delivered the result. Either it found
    // the job waiting and parse intake took it to parsed (actor webhook), or it came before the
    // submit stage committed parse_queued (outcome early, a race a loaded machine wins often) and
    // the worker fetched the result at once (actor reconciler).
    const { rows } = await db.pool.query("SELECT outcome FROM upload_pipeline.webhook_log WHERE job_id = $1 AND event_type = 'parse.success'", [
      (await db.pool.query("SELECT job_id FROM upload_pipeline.upload_jobs WHERE document_id = $1", [documentId])).rows[0].job_id,
    ]);
    expect(rows).toHaveLength(1);
    const parsedBy = body!.timeline.find((e) => e.to === "parsed")?.actor;
    expect({ outcome: rows[0].outcome, parsedBy }).toEqual(
      rows[0].outcome === "early" ? { outcome: "early", parsedBy: "reconciler" } : { outcome: "handed_off", parsedBy: "webhook" },
    );

    // Another user cannot see it; the same bytes uploaded again are the same document.
    const stranger = await fetch(`${api.baseUrl}/jobs/${documentId}`, {
      headers: { authorization: `Bearer ${await api.token("0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e")}` },
    });
    expect(stranger.status).toBe(404);
    const again = await api.upload({ kind: "document", userId, filename: "flow.md", mime: "text/markdown", bytes });
    expect(again).toMatchObject({ documentId, status: 200 });
  });
});
