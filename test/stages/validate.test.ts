/**
 * The validate stage (`parsed → parse_validated`): `normalized_sha256` is the SHA-256 of the
 * normalized parsed text, so files that differ only in what normalization removes are duplicates,
 * and the oldest document with that text is the canonical one; a parse with no text but our page
 * markers, or one that is mostly undecodable bytes, fails permanently. Real PostgreSQL, the
 * mocks' handlers (LlamaParse returns a text file as its own markdown), real workers.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256 } from "../../src/ids.ts";
import { normalize } from "../../src/text/normalize.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

let env: PipelineEnv;
beforeAll(async () => {
  env = await startPipelineEnv({ seed: 29 });
});
afterAll(() => env.close());

async function run(jobIds: string[]) {
  const worker = env.worker();
  await worker.start();
  try {
    return await waitForTerminal(env, jobIds);
  } finally {
    await worker.stop();
  }
}

async function documentRow(documentId: string) {
  const { rows } = await env.db.pool.query<{ parsed_path: string; normalized_sha256: string | null }>(
    "SELECT parsed_path, normalized_sha256 FROM upload_pipeline.documents WHERE document_id = $1",
    [documentId],
  );
  return rows[0]!;
}

async function lastError(jobId: string) {
  const { rows } = await env.db.pool.query<{ status: string; last_error: { code: string } | null }>(
    "SELECT status, last_error FROM upload_pipeline.upload_jobs WHERE job_id = $1",
    [jobId],
  );
  return { status: rows[0]!.status, code: rows[0]!.last_error?.code };
}

async function deduplicatedFrom(jobId: string): Promise<unknown> {
  const { rows } = await env.db.pool.query<{ detail: Record<string, unknown> }>(
    "SELECT detail FROM upload_pipeline.job_events WHERE job_id = $1 AND to_status = 'parse_validated'",
    [jobId],
  );
  return rows[0]!.detail.deduplicated_from;
}

describe("duplicate detection by the normalized text", () => {
  it("normalized_sha256 is the SHA-256 of the normalized parsed text, and a file differing only in line endings and trailing spaces is its duplicate", async () => {
    const lf = await env.upload({ content: "# Minutes\n\nThe board met on Tuesday.\n\nIt approved the budget.\n" });
    expect((await run([lf.jobId])).get(lf.jobId)).toBe("complete");
    // Uploaded once the first is done: a worker would take both at once, and either could be first.
    const crlf = await env.upload({ content: "# Minutes  \r\n\r\n\r\nThe board met on Tuesday.   \r\n\r\nIt approved the budget.\r\n" });
    expect((await run([crlf.jobId])).get(crlf.jobId)).toBe("complete");

    const canonical = await documentRow(lf.documentId);
    const parsed = await new Response(await env.services.storage.download(canonical.parsed_path)).text();
    expect(canonical.normalized_sha256).toBe(sha256(normalize(parsed)));
    expect(await documentRow(crlf.documentId)).toEqual(canonical);
    expect(await deduplicatedFrom(crlf.jobId)).toBe(lf.documentId);
  });

  it("the oldest document with the text is canonical, also for a third copy", async () => {
    const content = `# Shared ${randomUUID()}\n\nThree users upload the same notes.\n`;
    const docs = [];
    for (const _ of [1, 2, 3]) {
      const doc = await env.upload({ content, userId: randomUUID() });
      expect((await run([doc.jobId])).get(doc.jobId)).toBe("complete");
      docs.push(doc);
    }
    expect(await deduplicatedFrom(docs[1]!.jobId)).toBe(docs[0]!.documentId);
    expect(await deduplicatedFrom(docs[2]!.jobId)).toBe(docs[0]!.documentId);
  });
});

describe("unusable parses fail permanently", () => {
  it("a parse with nothing but our page markers is empty: failed_parse, parse_empty", async () => {
    const doc = await env.upload({ content: "  \n\f\n \n\f\t\n" }); // three pages of whitespace
    expect((await run([doc.jobId])).get(doc.jobId)).toBe("failed_parse");
    expect(await lastError(doc.jobId)).toEqual({ status: "failed_parse", code: "parse_empty" });
  });

  it("a parse that is mostly undecodable bytes (U+FFFD) is unusable: failed_parse, parse_unusable", async () => {
    const doc = await env.upload({ content: `# Scan\n\n${"\uFFFD".repeat(40)} some words\n` });
    expect((await run([doc.jobId])).get(doc.jobId)).toBe("failed_parse");
    expect(await lastError(doc.jobId)).toEqual({ status: "failed_parse", code: "parse_unusable" });
  });
});
