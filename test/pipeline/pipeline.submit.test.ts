/**
 * The submit stage sends LlamaParse the stored file without holding it whole: streamed through
 * a temporary file with a size cap (`UPLOAD_MAX_BYTES`) and its SHA-256 checked against the
 * document's, so an object bigger than the limit, or other than the bytes the API accepted, is
 * never sent (and never billed).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SubmitParseInput } from "../../src/clients/llamaparse.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

const CAP = 64 * 1024;
let env: PipelineEnv;
/** What the submit stage handed the LlamaParse client, per call. */
const handed: { file: unknown; size: number }[] = [];

beforeAll(async () => {
  env = await startPipelineEnv({ seed: 21, env: { UPLOAD_MAX_BYTES: String(CAP) } });
  const submit = env.services.llamaparse.submitParse;
  env.services.llamaparse.submitParse = (input: SubmitParseInput, signal?: AbortSignal) => {
    handed.push({ file: input.file, size: input.file instanceof Blob ? input.file.size : input.file.byteLength });
    return submit(input, signal);
  };
});
afterAll(() => env.close());

async function job(jobId: string) {
  const { rows } = await env.db.pool.query<{ status: string; last_error: { code: string; class: string; message: string } | null }>(
    "SELECT status, last_error FROM upload_pipeline.upload_jobs WHERE job_id = $1",
    [jobId],
  );
  return rows[0]!;
}

async function runToTerminal(jobIds: string[]) {
  const worker = env.worker();
  await worker.start();
  try {
    return await waitForTerminal(env, jobIds, 20_000);
  } finally {
    await worker.stop();
  }
}

describe("submit stage: the stored file, streamed and checked", () => {
  it("sends a file under the cap as a file-backed Blob with exactly the stored bytes", async () => {
    const content = `# Fits\n\n${"Some words in a paragraph. ".repeat(1500)}\n`;
    const doc = await env.upload({ content });
    const before = env.mocks.stats().llamaparse.jobsCreated;
    const states = await runToTerminal([doc.jobId]);
    expect(states.get(doc.jobId)).toBe("complete");
    expect(env.mocks.stats().llamaparse.jobsCreated).toBe(before + 1);
    const last = handed.at(-1)!;
    expect(last.file).toBeInstanceOf(Blob);
    expect(last.size).toBe(Buffer.byteLength(content));
  });

  it("refuses an object larger than UPLOAD_MAX_BYTES without sending it: failed_parse raw_too_large", async () => {
    const doc = await env.upload({ content: `# Too big\n\n${"x".repeat(CAP + 1)}\n` });
    const calls = handed.length;
    const before = env.mocks.stats().llamaparse.jobsCreated;
    await runToTerminal([doc.jobId]);
    const row = await job(doc.jobId);
    expect(row.status).toBe("failed_parse");
    expect(row.last_error).toMatchObject({ code: "raw_too_large", class: "permanent" });
    expect(row.last_error!.message).toContain("UPLOAD_MAX_BYTES");
    expect(handed.length).toBe(calls);
    expect(env.mocks.stats().llamaparse.jobsCreated).toBe(before);
  });

  it("refuses an object replaced after the upload (other bytes than its SHA-256): failed_parse raw_mismatch", async () => {
    const doc = await env.upload({ content: "# Original\n\nThe bytes the API accepted.\n" });
    const { rows } = await env.db.pool.query<{ raw_path: string }>("SELECT raw_path FROM upload_pipeline.documents WHERE document_id = $1", [doc.documentId]);
    await env.services.storage.upload(rows[0]!.raw_path, new TextEncoder().encode("# Swapped\n\nOther bytes.\n"), "text/markdown", { upsert: true });
    const calls = handed.length;
    await runToTerminal([doc.jobId]);
    const row = await job(doc.jobId);
    expect(row.status).toBe("failed_parse");
    expect(row.last_error).toMatchObject({ code: "raw_mismatch", class: "permanent" });
    expect(handed.length).toBe(calls);
  });
});
