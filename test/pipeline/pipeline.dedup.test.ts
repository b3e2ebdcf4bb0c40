/**
 * Deduplication at validate (SPEC §4 parsed → parse_validated): a document whose normalized
 * text already exists reuses the canonical `parsed_path`, and its event says where it came from.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { parsedPath } from "../../src/stages/services.ts";
import { fingerprint, startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({ seed: 13 });
});
afterAll(() => env.close());

async function run(jobIds: string[]) {
  const worker = env.worker();
  await worker.start();
  const states = await waitForTerminal(env, jobIds);
  await worker.stop();
  return states;
}

async function documentRow(documentId: string) {
  const { rows } = await env.db.pool.query<{ user_id: string; parsed_path: string; normalized_sha256: string }>(
    "SELECT user_id, parsed_path, normalized_sha256 FROM upload_pipeline.documents WHERE document_id = $1",
    [documentId],
  );
  return rows[0]!;
}

async function validatedEvent(jobId: string) {
  const { rows } = await env.db.pool.query<{ detail: Record<string, unknown> }>(
    "SELECT detail FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status = 'parse_validated'",
    [jobId],
  );
  expect(rows).toHaveLength(1);
  return rows[0]!.detail;
}

describe("deduplication", () => {
  it("the same content uploaded by another user reuses the first document's parsed_path and records deduplicated_from", async () => {
    const content = markdownDocument(mulberry32(4), "Shared", 4_000);
    const first = await env.upload({ content, userId: randomUUID(), filename: "a.md" });
    expect((await run([first.jobId])).get(first.jobId)).toBe("complete");

    const second = await env.upload({ content, userId: randomUUID(), filename: "b.md" });
    expect(second.documentId).not.toBe(first.documentId);
    expect((await run([second.jobId])).get(second.jobId)).toBe("complete");

    const [a, b] = [await documentRow(first.documentId), await documentRow(second.documentId)];
    expect(a.parsed_path).toBe(parsedPath(a.user_id, first.documentId));
    expect(b.parsed_path).toBe(a.parsed_path);
    expect(b.normalized_sha256).toBe(a.normalized_sha256);
    expect(await validatedEvent(second.jobId)).toMatchObject({ deduplicated_from: first.documentId, normalized_sha256: a.normalized_sha256 });
    expect(await validatedEvent(first.jobId)).not.toHaveProperty("deduplicated_from");

    // The second document's chunks come from the canonical text: same content, its own ids.
    const [fa, fb] = [await fingerprint(env, first.documentId), await fingerprint(env, second.documentId)];
    expect(fb.map((r) => r.chunk_sha)).toEqual(fa.map((r) => r.chunk_sha));
    expect(fb.map((r) => r.vector_sha)).toEqual(fa.map((r) => r.vector_sha));
    expect(new Set([...fa, ...fb].map((r) => r.chunk_id)).size).toBe(fa.length + fb.length);
  });

  it("different content is not deduplicated", async () => {
    const one = await env.upload({ content: "# One\n\nFirst text.\n", filename: "one.md" });
    const two = await env.upload({ content: "# Two\n\nSecond text.\n", filename: "two.md" });
    const states = await run([one.jobId, two.jobId]);
    expect([...states.values()]).toEqual(["complete", "complete"]);
    for (const doc of [one, two]) {
      const row = await documentRow(doc.documentId);
      expect(row.parsed_path).toBe(parsedPath(row.user_id, doc.documentId));
      expect(await validatedEvent(doc.jobId)).not.toHaveProperty("deduplicated_from");
    }
  });
});
