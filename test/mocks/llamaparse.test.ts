/**
 * The LlamaParse v2 mock against SPEC §7: the official `@llamaindex/llama-cloud` SDK
 * (`parsing.create` with `upload_file`, `parsing.get` with `expand`, `parsing.list`,
 * `parsing.cancel`, `files.create`) over real HTTP, job schedules, deterministic markdown,
 * the poison marker, and FastAPI-shaped errors.
 */
import LlamaCloud, { APIError } from "@llamaindex/llama-cloud";
import { describe, expect, it } from "vitest";
import { joinPages, parsedPages, POISON_MARKER } from "../../mocks/index.ts";
import { syntheticPages } from "../../mocks/llamaparse/markdown.ts";
import type { MockServer } from "../../mocks/server.ts";
import { useMockServer } from "../support/mockServer.ts";

let server: MockServer;
let sdk: LlamaCloud;

// Parses take 30 ms unless a test says otherwise.
useMockServer({ seed: 5, faults: { llamaparse: { schedule: { pending: { dist: "fixed", ms: 10 }, running: { dist: "fixed", ms: 20 } } } } }, (started) => {
  server = started;
  sdk = new LlamaCloud({ apiKey: started.env.LLAMA_CLOUD_API_KEY, baseURL: started.urls.llamaparse, maxRetries: 0 });
});

const md = (text: string, name = "doc.md") => new File([text], name, { type: "text/markdown" });

async function waitFor(id: string, expand: string[] = []) {
  for (let i = 0; i < 200; i++) {
    const got = await sdk.parsing.get(id, { expand });
    if (["COMPLETED", "FAILED", "CANCELLED"].includes(got.job.status)) return got;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`job ${id} never finished`);
}

describe("the official SDK", () => {
  it("uploads a markdown file and gets it back as itself, page by page", async () => {
    const created = await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: md("# Title\n\nBody text.") });
    expect(created).toMatchObject({ status: "PENDING", name: "doc.md", tier: "fast", error_message: null });
    expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.project_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(typeof created.created_at).toBe("string");
    const done = await waitFor(created.id, ["markdown", "metadata", "markdown_full"]);
    expect(done.job.status).toBe("COMPLETED");
    expect(done.markdown).toEqual({ pages: [{ page_number: 1, markdown: "# Title\n\nBody text.", success: true }] });
    expect(done.markdown_full).toBe("# Title\n\nBody text.");
    expect(done.metadata?.pages).toHaveLength(1);
  });

  it("goes PENDING → RUNNING → COMPLETED on the configured schedule", async () => {
    server.mocks.setFaults({ llamaparse: { schedule: { pending: { dist: "fixed", ms: 60 }, running: { dist: "fixed", ms: 60 } } } });
    const { id } = await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: md("x") });
    const seen: string[] = [];
    for (let i = 0; i < 100 && seen.at(-1) !== "COMPLETED"; i++) {
      const status = (await sdk.parsing.get(id)).job.status;
      if (seen.at(-1) !== status) seen.push(status);
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(seen).toEqual(["PENDING", "RUNNING", "COMPLETED"]);
  });

  it("turns other types into stable synthetic markdown sized from the input", async () => {
    const bytes = new Uint8Array(40_000).map((_, i) => (i * 7) % 251);
    const file = () => new File([bytes], "report.pdf", { type: "application/pdf" });
    const a = await waitFor((await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: file() })).id, ["markdown", "markdown_full"]);
    const b = await waitFor((await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: file() })).id, ["markdown"]);
    const pages = a.markdown!.pages.map((p) => ("markdown" in p ? p.markdown : ""));
    expect(pages.length).toBeGreaterThan(1);
    expect(pages[0]).toMatch(/^# /);
    expect(b.markdown).toEqual(a.markdown);
    expect(pages).toEqual(syntheticPages(bytes));
    expect(a.markdown_full).toBe(joinPages(pages));
    expect(a.markdown_full!.length).toBeGreaterThan(9_000);
    expect(a.markdown_full!.length).toBeLessThan(12_000);
  });

  it("fails a poisoned document with an error_message", async () => {
    const { id } = await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: md(`intro ${POISON_MARKER} rest`) });
    const done = await waitFor(id, ["markdown"]);
    expect(done.job.status).toBe("FAILED");
    expect(done.job.error_message).toContain(POISON_MARKER);
    expect(done.markdown).toBeNull();
  });

  it("accepts comma-separated expand as well as repeated", async () => {
    const { id } = await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: md("# A") });
    await waitFor(id);
    const res = await fetch(`${server.urls.llamaparse}/api/v2/parse/${id}?expand=markdown,metadata&expand=text`, {
      headers: { authorization: `Bearer ${server.env.LLAMA_CLOUD_API_KEY}` },
    });
    const body = (await res.json()) as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual(["job", "markdown", "metadata", "text"]);
  });

  it("parses a file uploaded with files.create by file_id", async () => {
    const file = await sdk.files.create({ file: md("# From file", "f.md"), purpose: "parse" });
    const created = await sdk.parsing.create({ tier: "fast", version: "latest", file_id: file.id });
    const done = await waitFor(created.id, ["markdown_full"]);
    expect(done.markdown_full).toBe("# From file");
  });

  it("parses a source_url on this machine (a signed Storage URL)", async () => {
    const key = server.env.SUPABASE_SERVICE_ROLE_KEY!;
    await fetch(`${server.urls.storage}/object/documents/s/a.md`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "text/markdown" },
      body: "# Signed",
    });
    const sign = await fetch(`${server.urls.storage}/object/sign/documents/s/a.md`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ expiresIn: 60 }),
    });
    const { signedURL } = (await sign.json()) as { signedURL: string };
    const created = await sdk.parsing.create({ tier: "fast", version: "latest", source_url: `${server.urls.storage}${signedURL}` });
    expect((await waitFor(created.id, ["markdown_full"])).markdown_full).toBe("# Signed");
  });

  it("lists jobs with filters, newest first, across pages", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      ids.push((await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: md(`# ${i}`), user_metadata: { n: String(i) } })).id);
      await new Promise((r) => setTimeout(r, 5));
    }
    const seen: string[] = [];
    for await (const job of sdk.parsing.list({ page_size: 2 })) seen.push(job.id);
    expect(seen).toEqual([...ids].reverse());
    const only = [];
    for await (const job of sdk.parsing.list({ job_ids: [ids[1]!] })) only.push(job);
    expect(only.map((j) => j.user_metadata)).toEqual([{ n: "1" }]);
  });

  it("cancels a running job", async () => {
    server.mocks.setFaults({ llamaparse: { schedule: { pending: { dist: "fixed", ms: 5_000 } } } });
    const { id } = await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: md("x") });
    expect((await sdk.parsing.cancel(id)).status).toBe("CANCELLED");
    expect((await sdk.parsing.get(id)).job.status).toBe("CANCELLED");
  });

  it("reports usage credits by tier once complete", async () => {
    const { id } = await sdk.parsing.create({ tier: "agentic", version: "latest", upload_file: md("x") });
    await waitFor(id);
    expect((await sdk.parsing.get(id, { expand: ["usage"] })).job.usage).toEqual({ credits: 10 });
    expect(server.mocks.stats().llamaparse).toMatchObject({ jobsCreated: 1, jobsFinished: { COMPLETED: 1 }, pagesParsed: 1 });
  });

  it("surfaces errors as APIError with the status", async () => {
    const missing = await sdk.parsing.get("00000000-0000-4000-8000-000000000000").catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(APIError);
    expect((missing as APIError).status).toBe(404);
    const bad = new LlamaCloud({ apiKey: "llx-wrong", baseURL: server.urls.llamaparse, maxRetries: 0 });
    expect(((await bad.parsing.get("x").catch((e: unknown) => e)) as APIError).status).toBe(401);
  });
});

describe("raw wire format", () => {
  const auth = () => ({ authorization: `Bearer ${server.env.LLAMA_CLOUD_API_KEY}` });

  it("answers errors as {detail}", async () => {
    const noKey = await fetch(`${server.urls.llamaparse}/api/v2/parse/abc`);
    expect(noKey.status).toBe(401);
    expect(await noKey.json()).toEqual({ detail: "Not authenticated" });
    const unknown = await fetch(`${server.urls.llamaparse}/api/v2/parse/abc`, { headers: auth() });
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toEqual({ detail: "Job not found" });
  });

  it("answers 422 with [{loc, msg, type}] for a missing file or a bad configuration", async () => {
    const form = new FormData();
    form.append("configuration", JSON.stringify({ version: "latest", tier: "bogus" }));
    const res = await fetch(`${server.urls.llamaparse}/api/v2/parse/upload`, { method: "POST", headers: auth(), body: form });
    expect(res.status).toBe(422);
    expect(await res.json()).toEqual({ detail: [{ type: "missing", loc: ["body", "file"], msg: "Field required" }] });

    const form2 = new FormData();
    form2.append("file", md("x"));
    form2.append("configuration", JSON.stringify({ version: "latest", webhook_configurations: [{ webhook_url: "not a url" }] }));
    const res2 = await fetch(`${server.urls.llamaparse}/api/v2/parse/upload`, { method: "POST", headers: auth(), body: form2 });
    expect(res2.status).toBe(422);
    const detail = ((await res2.json()) as { detail: Array<{ loc: unknown[]; type: string }> }).detail;
    expect(detail.map((d) => [d.loc.join("."), d.type])).toEqual([
      ["body.configuration.tier", "missing"],
      ["body.configuration.webhook_configurations.0.webhook_url", "url_parsing"],
    ]);

    const none = await fetch(`${server.urls.llamaparse}/api/v2/parse`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/json" },
      body: JSON.stringify({ tier: "fast", version: "latest" }),
    });
    expect(none.status).toBe(422);
  });

  it("answers 402 and 429 faults as {detail}, the 429 without Retry-After", async () => {
    server.mocks.setFaults({
      llamaparse: {
        bursts: [
          { fault: 402, start: 1, count: 1 },
          { fault: 429, start: 2, count: 1 },
        ],
      },
    });
    const r402 = await fetch(`${server.urls.llamaparse}/api/v2/parse/x`, { headers: auth() });
    expect(r402.status).toBe(402);
    expect(Object.keys((await r402.json()) as object)).toEqual(["detail"]);
    const r429 = await fetch(`${server.urls.llamaparse}/api/v2/parse/x`, { headers: auth() });
    expect(r429.status).toBe(429);
    expect(r429.headers.get("retry-after")).toBeNull();
    expect(typeof ((await r429.json()) as { detail: unknown }).detail).toBe("string");
  });

  it("fails jobs at the planned rate, the same ones for the same seed", async () => {
    server.mocks.setFaults({ llamaparse: { jobFailureRate: 0.5, schedule: { pending: { dist: "fixed", ms: 1 }, running: { dist: "fixed", ms: 1 } } } });
    const run = async () => {
      const out: string[] = [];
      for (let i = 0; i < 12; i++) {
        const { id } = await sdk.parsing.create({ tier: "fast", version: "latest", upload_file: md(`doc ${i}`) });
        out.push((await waitFor(id)).job.status);
      }
      return out;
    };
    const first = await run();
    server.mocks.reset();
    expect(await run()).toEqual(first);
    expect(new Set(first)).toEqual(new Set(["COMPLETED", "FAILED"]));
  });
});

describe("parsedPages", () => {
  it("returns text files as themselves and splits on form feeds", () => {
    expect(parsedPages(new TextEncoder().encode("a\fb"), "x.txt", "text/plain")).toEqual(["a", "b"]);
    expect(parsedPages(new TextEncoder().encode("# A"), "x.md", "application/octet-stream")).toEqual(["# A"]);
  });
});
