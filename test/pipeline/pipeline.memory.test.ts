/**
 * Bounded memory (issue 3, "Memory must not grow with the document"): the chunk stage writes
 * chunks in batches of at most `chunkWriteBatch` and the embed stage pages through the chunk
 * buffer in requests of at most `embedBatchSize` inputs, so the chunks held at once stay the
 * same for a small document and one ~40× larger, while the total number of chunks grows.
 *
 * Observed through the fault points' `info`: `commit.chunks.before` carries the size of the
 * batch about to be written, `call.openai.embed.before` the number of inputs about to be sent.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import type { FaultPoints } from "../../src/worker/faultPoints.ts";
import { fingerprint, startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({ seed: 31 });
});
afterAll(() => env.close());

/** Per job: the size of every chunk-insert batch and every embeddings request, in order. */
class BatchSizes implements FaultPoints {
  readonly chunkWrites = new Map<string, number[]>();
  readonly embedRequests = new Map<string, number[]>();
  hit(point: string, info?: { jobId?: string; [k: string]: unknown }): void {
    if (!info?.jobId) return;
    if (point === "commit.chunks.before") push(this.chunkWrites, info.jobId, info.size);
    if (point === "call.openai.embed.before") push(this.embedRequests, info.jobId, info.inputs);
  }
}

function push(map: Map<string, number[]>, key: string, value: unknown): void {
  if (typeof value !== "number") throw new Error(`fault point info lacks a numeric size: ${String(value)}`);
  map.set(key, [...(map.get(key) ?? []), value]);
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

describe("bounded memory", () => {
  it("the largest chunk batch and embeddings request stay within the configured sizes for a small and a 40× larger document", async () => {
    const rng = mulberry32(3);
    const small = await env.upload({ content: markdownDocument(rng, "Small", 5_000), filename: "small.md" });
    const large = await env.upload({ content: markdownDocument(rng, "Large", 200_000), filename: "large.md" });
    const sizes = new BatchSizes();
    const worker = env.worker({ concurrency: 2, faults: sizes });
    await worker.start();
    const states = await waitForTerminal(env, [small.jobId, large.jobId]);
    await worker.stop();
    expect([...states.values()]).toEqual(["complete", "complete"]);

    const { chunkWriteBatch, embedBatchSize } = env.services.settings;
    const observed = [];
    for (const doc of [small, large]) {
      const chunks = (await fingerprint(env, doc.documentId)).length;
      const writes = sizes.chunkWrites.get(doc.jobId) ?? [];
      const requests = sizes.embedRequests.get(doc.jobId) ?? [];
      // Each chunk was written once and embedded once, in bounded batches.
      expect(sum(writes)).toBe(chunks);
      expect(sum(requests)).toBe(chunks);
      expect(Math.max(...writes)).toBeLessThanOrEqual(chunkWriteBatch);
      expect(Math.max(...requests)).toBeLessThanOrEqual(embedBatchSize);
      observed.push({ chunks, writes, requests });
    }
    const [s, l] = observed as [(typeof observed)[0], (typeof observed)[0]];
    // The larger document has many more chunks, in more batches, not bigger ones.
    expect(l.chunks).toBeGreaterThanOrEqual(20 * s.chunks);
    expect(l.chunks).toBeGreaterThan(chunkWriteBatch);
    expect(l.writes.length).toBeGreaterThan(1);
    expect(l.requests.length).toBeGreaterThan(s.requests.length);
    expect(Math.max(...l.writes)).toBe(chunkWriteBatch);
    expect(Math.max(...l.requests)).toBe(embedBatchSize);
  });
});
