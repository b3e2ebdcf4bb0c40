/**
 * The OpenAI Files and Batches mock, checked with the official `openai` SDK over real HTTP:
 * upload, create, retrieve through validating → in_progress → finalizing → completed, the
 * output file's vectors and usage equal to the synchronous endpoint's, lookup by metadata, and
 * the fault plan's fates (expired, partly failed, slow, failed outright, and output files with a
 * foreign, a repeated or a cut line) keyed by content.
 */
import type OpenAI from "openai";
import { BadRequestError, NotFoundError } from "openai";
import { toFile } from "openai/uploads";
import { describe, expect, it } from "vitest";
import type { MockServer } from "../../mocks/server.ts";
import { openaiSdk, useMockServer } from "../support/mockServer.ts";
import { until } from "../support/until.ts";

let server: MockServer;
let client: OpenAI;

useMockServer({ seed: 5 }, (started) => {
  server = started;
  client = openaiSdk(started);
});

const MODEL = "text-embedding-3-small";

function jsonl(texts: string[], extra: Record<string, unknown> = {}, prefix = "req"): string {
  return texts
    .map((t, i) => JSON.stringify({ custom_id: `${prefix}-${i}`, method: "POST", url: "/v1/embeddings", body: { model: MODEL, input: t, ...extra } }))
    .join("\n");
}

async function submit(texts: string[], metadata: Record<string, string> = { intent: "test" }, extra: Record<string, unknown> = {}, prefix = "req") {
  const file = await client.files.create({ file: await toFile(Buffer.from(jsonl(texts, extra, prefix)), "requests.jsonl"), purpose: "batch" });
  return client.batches.create({ input_file_id: file.id, endpoint: "/v1/embeddings", completion_window: "24h", metadata });
}

async function finished(id: string): Promise<OpenAI.Batches.Batch> {
  let batch = await client.batches.retrieve(id);
  await until(`batch ${id} to finish`, async () => {
    batch = await client.batches.retrieve(id);
    return !["validating", "in_progress", "finalizing"].includes(batch.status);
  });
  return batch;
}

/** One line of an output or error file (the fields these tests read). */
interface ResultLine {
  custom_id: string;
  response: {
    status_code: number;
    body: { data: Array<{ embedding: number[] | string }>; usage: { prompt_tokens: number }; error: { type: string } };
  } | null;
  error: { code: string; message: string } | null;
}

async function lines(fileId: string | null | undefined): Promise<ResultLine[]> {
  if (!fileId) return [];
  const text = await (await client.files.content(fileId)).text();
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as ResultLine);
}

describe("Files and Batches through the official SDK", () => {
  it("moves a batch through every status and answers each line as /v1/embeddings does", async () => {
    server.mocks.setFaults({ openai: { batches: { schedule: { validatingMs: 150, inProgressMs: 150, finalizingMs: 150 } } } });
    const texts = ["alpha", "beta gamma", "delta"];
    const created = await submit(texts);
    expect(created.status).toBe("validating");
    expect(created.endpoint).toBe("/v1/embeddings");
    expect(created.completion_window).toBe("24h");
    expect(created.metadata).toEqual({ intent: "test" });
    const seen = new Set<string>([created.status]);
    await until("the batch to complete", async () => {
      const b = await client.batches.retrieve(created.id);
      seen.add(b.status);
      return b.status === "completed";
    });
    expect([...seen]).toEqual(["validating", "in_progress", "finalizing", "completed"]);
    const done = await client.batches.retrieve(created.id);
    expect(done.request_counts).toEqual({ total: 3, completed: 3, failed: 0 });
    expect(done.error_file_id).toBeNull();

    const out = await lines(done.output_file_id);
    const sync = await client.embeddings.create({ model: MODEL, input: texts, encoding_format: "float" });
    expect(out.map((l) => l.custom_id)).toEqual(["req-0", "req-1", "req-2"]);
    out.forEach((l, i) => {
      expect(l.response!.status_code).toBe(200);
      expect(l.error).toBeNull();
      expect(l.response!.body.data[0]!.embedding).toEqual(sync.data[i]!.embedding);
    });
    const batchTokens = out.reduce((n, l) => n + l.response!.body.usage.prompt_tokens, 0);
    expect(batchTokens).toBe(sync.usage.prompt_tokens);
    const stats = server.mocks.stats();
    expect(stats.openai.batchUsage[MODEL]).toEqual({ requests: 3, inputs: 3, prompt_tokens: sync.usage.prompt_tokens });
    expect(stats.openai.batches).toEqual({ created: 1, finished: { completed: 1 } });
    expect(stats.requests["openai.batches.create"]).toEqual({ "200": 1 });
  });

  it("finds a batch by its metadata and a file by its name in the lists", async () => {
    const first = await submit(["one"], { intent: "a" });
    const second = await submit(["two"], { intent: "b" });
    const found: OpenAI.Batches.Batch[] = [];
    for await (const b of client.batches.list({ limit: 1 })) found.push(b);
    expect(found.map((b) => b.id)).toEqual([second.id, first.id]); // newest first, paged by `after`
    expect(found.find((b) => b.metadata?.intent === "a")?.id).toBe(first.id);
    const files: OpenAI.Files.FileObject[] = [];
    for await (const f of client.files.list({ purpose: "batch", limit: 1 })) files.push(f);
    expect(files.map((f) => f.filename)).toEqual(["requests.jsonl", "requests.jsonl"]);
    expect(files.map((f) => f.id)).toEqual([second.input_file_id, first.input_file_id]);
  });

  it("puts a line the endpoint refuses in the error file with the synchronous 400 body", async () => {
    const file = await client.files.create({
      file: await toFile(
        Buffer.from(`${jsonl(["fine"])}\n${JSON.stringify({ custom_id: "bad", method: "POST", url: "/v1/embeddings", body: { model: MODEL, input: "" } })}`),
        "x.jsonl",
      ),
      purpose: "batch",
    });
    const b = await finished((await client.batches.create({ input_file_id: file.id, endpoint: "/v1/embeddings", completion_window: "24h" })).id);
    expect(b.status).toBe("completed");
    expect(b.request_counts).toEqual({ total: 2, completed: 1, failed: 1 });
    const [err] = await lines(b.error_file_id);
    expect(err!.custom_id).toBe("bad");
    expect(err!.response!.status_code).toBe(400);
    expect(err!.response!.body.error.type).toBe("invalid_request_error");
  });

  it("fails a batch whose input file is not valid JSONL, and refuses bad parameters by name", async () => {
    const file = await client.files.create({ file: await toFile(Buffer.from("not json\n"), "x.jsonl"), purpose: "batch" });
    const b = await finished((await client.batches.create({ input_file_id: file.id, endpoint: "/v1/embeddings", completion_window: "24h" })).id);
    expect(b.status).toBe("failed");
    expect(b.errors?.data?.[0]).toMatchObject({ code: "invalid_json_line", line: 1 });
    expect(b.output_file_id).toBeNull();

    await expect(client.batches.create({ input_file_id: file.id, endpoint: "/v1/embeddings", completion_window: "48h" as "24h" })).rejects.toMatchObject({
      status: 400,
      param: "completion_window",
    });
    await expect(client.batches.create({ input_file_id: "file-nope", endpoint: "/v1/embeddings", completion_window: "24h" })).rejects.toBeInstanceOf(
      NotFoundError,
    );
    await expect(client.files.create({ file: await toFile(Buffer.from("x"), "x.txt"), purpose: "batch" })).rejects.toBeInstanceOf(BadRequestError);
    await expect(client.files.content(file.id)).rejects.toBeInstanceOf(BadRequestError); // inputs are not downloadable
  });

  it("cancels a batch still in progress: every line ends batch_cancelled", async () => {
    server.mocks.setFaults({ openai: { batches: { schedule: { validatingMs: 0, inProgressMs: 60_000, finalizingMs: 0 } } } });
    const b = await submit(["one", "two"]);
    await client.batches.cancel(b.id);
    const done = await client.batches.retrieve(b.id);
    expect(done.status).toBe("cancelled");
    expect((await lines(done.error_file_id)).map((l) => l.error!.code)).toEqual(["batch_cancelled", "batch_cancelled"]);
  });
});

describe("fates from the fault plan, keyed by content", () => {
  const texts = Array.from({ length: 20 }, (_, i) => `request number ${i}`);

  it("partly failed: some lines (at least one) go to the error file with a 500, the rest to the output", async () => {
    server.mocks.setFaults({ openai: { batches: { partialFailure: { rate: 1, requests: 0.3 } } } });
    const b = await finished((await submit(texts)).id);
    expect(b.status).toBe("completed");
    const out = await lines(b.output_file_id);
    const err = await lines(b.error_file_id);
    expect(err.length).toBeGreaterThan(0);
    expect(out.length).toBeGreaterThan(0);
    expect(out.length + err.length).toBe(texts.length);
    expect(b.request_counts).toEqual({ total: texts.length, completed: out.length, failed: err.length });
    for (const l of err) expect(l.response!.status_code).toBe(500);
    // The same content under the same seed fails the same lines: replayable.
    server.mocks.reset();
    const again = await finished((await submit(texts)).id);
    expect((await lines(again.error_file_id)).map((l) => l.custom_id)).toEqual(err.map((l) => l.custom_id));
  });

  it("expired: the batch ends expired, its completed fraction in the output and the rest batch_expired", async () => {
    server.mocks.setFaults({ openai: { batches: { expire: { rate: 1, completedFraction: 0.5 } } } });
    const b = await finished((await submit(texts)).id);
    expect(b.status).toBe("expired");
    expect(b.expired_at).not.toBeNull();
    const out = await lines(b.output_file_id);
    const err = await lines(b.error_file_id);
    expect(out.length + err.length).toBe(texts.length);
    expect(err.length).toBeGreaterThan(0);
    for (const l of err) expect(l.error).toEqual({ code: "batch_expired", message: expect.any(String) });
    expect(server.mocks.stats().openai.batchUsage[MODEL]?.requests ?? 0).toBe(out.length);
  });

  it("slow: the batch stays in_progress for the extra time", async () => {
    server.mocks.setFaults({ openai: { batches: { schedule: { validatingMs: 0, inProgressMs: 0, finalizingMs: 0 }, slow: { rate: 1, extraMs: 400 } } } });
    const b = await submit(texts);
    const started = Date.now();
    expect((await client.batches.retrieve(b.id)).status).toBe("in_progress");
    const done = await finished(b.id);
    expect(done.status).toBe("completed");
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
  });

  it("a rate of 0.5 picks a content-keyed subset: which batches fail does not depend on their order", async () => {
    server.mocks.setFaults({ openai: { batches: { schedule: { validatingMs: 0, inProgressMs: 0, finalizingMs: 0 }, partialFailure: { rate: 0.5 } } } });
    const groups = Array.from({ length: 8 }, (_, g) => [`group ${g} a`, `group ${g} b`]);
    const fates = async (order: number[]) => {
      server.mocks.reset();
      const result = new Map<number, boolean>();
      for (const g of order) result.set(g, (await finished((await submit(groups[g]!)).id)).request_counts!.failed > 0);
      return [...result.entries()].sort((a, b) => a[0] - b[0]).map(([, failed]) => failed);
    };
    const forward = await fates([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(forward).toContain(true);
    expect(forward).toContain(false);
    expect(await fates([7, 6, 5, 4, 3, 2, 1, 0])).toEqual(forward);
  });

  it("failed: OpenAI fails the whole batch after validating with token_limit_exceeded, and writes no file", async () => {
    server.mocks.setFaults({ openai: { batches: { failed: { rate: 1 } } } });
    const b = await finished((await submit(texts)).id);
    expect(b.status).toBe("failed");
    expect(b.errors).toEqual({
      object: "list",
      data: [
        { code: "token_limit_exceeded", message: expect.stringMatching(/^Enqueued token limit reached for text-embedding-3-small/), line: null, param: null },
      ],
    });
    expect(b).toMatchObject({ output_file_id: null, error_file_id: null, in_progress_at: null, request_counts: { total: 0, completed: 0, failed: 0 } });
    expect(b.failed_at).not.toBeNull();
    expect(server.mocks.stats().openai.batchUsage[MODEL]).toBeUndefined();
  });

  it("foreignLine: the output also answers the newest other batch's request, unbilled; request_counts count this batch's own", async () => {
    const other = await submit(["another batch's text"], { intent: "other" }, {}, "other");
    server.mocks.setFaults({ openai: { batches: { foreignLine: { rate: 1 } } } });
    const b = await finished((await submit(texts)).id);
    const out = await lines(b.output_file_id);
    const foreign = out.filter((l) => !l.custom_id.startsWith("req-"));
    expect(foreign.map((l) => l.custom_id)).toEqual(["other-0"]);
    const sync = await client.embeddings.create({ model: MODEL, input: "another batch's text", encoding_format: "float" });
    expect(foreign[0]!.response!.body.data[0]!.embedding).toEqual(sync.data[0]!.embedding);
    expect(out).toHaveLength(texts.length + 1);
    expect(b.request_counts).toEqual({ total: texts.length, completed: texts.length, failed: 0 });
    await finished(other.id);
    expect(server.mocks.stats().openai.batchUsage[MODEL]!.requests).toBe(texts.length + 1); // the foreign line was billed to its own batch only
  });

  it("foreignLine with no other batch: the output answers this batch's first request again under a fresh custom_id", async () => {
    server.mocks.setFaults({ openai: { batches: { foreignLine: { rate: 1 } } } });
    const b = await finished((await submit(texts)).id);
    const out = await lines(b.output_file_id);
    const foreign = out.filter((l) => !l.custom_id.startsWith("req-"));
    expect(foreign.map((l) => l.custom_id)).toEqual([expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)]);
    expect(foreign[0]!.response!.body.data[0]!.embedding).toEqual(out.find((l) => l.custom_id === "req-0")!.response!.body.data[0]!.embedding);
    expect(b.request_counts).toEqual({ total: texts.length, completed: texts.length, failed: 0 });
    expect(server.mocks.stats().openai.batchUsage[MODEL]!.requests).toBe(texts.length);
  });

  it("duplicateLine: one output line appears twice in a row, counted once", async () => {
    server.mocks.setFaults({ openai: { batches: { duplicateLine: { rate: 1 } } } });
    const b = await finished((await submit(texts)).id);
    const text = await (await client.files.content(b.output_file_id!)).text();
    const raw = text.trim().split("\n");
    expect(raw).toHaveLength(texts.length + 1);
    const twice = raw.findIndex((l, i) => l === raw[i + 1]);
    expect(twice).toBeGreaterThanOrEqual(0);
    expect(new Set(raw.map((l) => (JSON.parse(l) as ResultLine).custom_id)).size).toBe(texts.length);
    expect(b.request_counts).toEqual({ total: texts.length, completed: texts.length, failed: 0 });
  });

  for (const format of ["float", "base64"] as const) {
    it(`wrongDimensions: one output line's embedding has only the first \`dimensions\` values (${format})`, async () => {
      server.mocks.setFaults({ openai: { batches: { wrongDimensions: { rate: 1, dimensions: 8 } } } });
      const b = await finished((await submit(texts, { intent: "test" }, { encoding_format: format })).id);
      const out = await lines(b.output_file_id);
      const width = (l: ResultLine) => {
        const e = l.response!.body.data[0]!.embedding;
        return typeof e === "string" ? Buffer.from(e, "base64").byteLength / 4 : e.length;
      };
      const cut = out.filter((l) => width(l) !== 1536);
      expect(cut.map(width)).toEqual([8]);
      const sync = await client.embeddings.create({ model: MODEL, input: texts[Number(cut[0]!.custom_id.slice(4))]!, encoding_format: format });
      const full = sync.data[0]!.embedding as unknown as number[] | string;
      const prefix = typeof full === "string" ? Buffer.from(full, "base64").subarray(0, 32).toString("base64") : full.slice(0, 8);
      expect(cut[0]!.response!.body.data[0]!.embedding).toEqual(prefix);
      expect(out).toHaveLength(texts.length);
    });
  }
});
