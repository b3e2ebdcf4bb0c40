/**
 * The LlamaParse v2 client (official SDK underneath) against handlers that answer like the real
 * API (SPEC §7): multipart upload with `file` + `configuration`, `GET /parse/{id}?expand=…`,
 * `{"detail": …}` errors.
 */
import { http, HttpResponse } from "msw";
import { setupServer } from "msw/node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createLlamaParseClient } from "../../src/clients/llamaparse.ts";
import { rejectionOf } from "../support/errors.ts";

const BASE = "http://llamaparse.test";
const API_KEY = "llx-test-abcdefghijklmnop";
const JOB_ID = "pjb-0d3f9c1e-1111-4222-8333-444455556666";

interface Received {
  authorization: string | null;
  parts: string[];
  file: { name: string; type: string; text: string } | undefined;
  configuration: Record<string, unknown> | undefined;
  query: URLSearchParams;
}
let received: Received | undefined;

const server = setupServer();
beforeAll(() => server.listen({ onUnhandledFrame: "error" }));
afterEach(() => {
  server.resetHandlers();
  received = undefined;
});
afterAll(() => server.close());

const client = (over: Partial<Parameters<typeof createLlamaParseClient>[0]> = {}) =>
  createLlamaParseClient({ apiKey: API_KEY, baseURL: BASE, tier: "fast", version: "latest", ...over });

const uploadHandler = http.post(`${BASE}/api/v2/parse/upload`, async ({ request }) => {
  const form = await request.formData();
  const file = form.get("file");
  const configuration = form.get("configuration");
  received = {
    authorization: request.headers.get("authorization"),
    parts: [...form.keys()],
    file: file instanceof File ? { name: file.name, type: file.type, text: await file.text() } : undefined,
    configuration: typeof configuration === "string" ? (JSON.parse(configuration) as Record<string, unknown>) : undefined,
    query: new URL(request.url).searchParams,
  };
  return HttpResponse.json({ id: JOB_ID, project_id: "proj-1", status: "PENDING", created_at: "2025-01-01T00:00:00Z", tier: "fast" });
});

const submitInput = {
  file: new TextEncoder().encode("# Report\n\nBody text."),
  filename: "report.md",
  mime: "text/markdown",
  webhookUrl: "https://api.example.com/webhooks/llamaparse",
  webhookSecret: "whsec-per-job-secret-0123456789",
};

describe("submitParse", () => {
  it("posts multipart `file` + `configuration` (one JSON string) and returns the job id", async () => {
    server.use(uploadHandler);
    const submitted = await client().submitParse({
      ...submitInput,
      webhookHeaders: { "X-Pipeline": "upload-pipeline" },
      tags: { pipeline_job_id: "job-42" },
    });
    expect(submitted).toEqual({ id: JOB_ID, status: "PENDING" });
    expect(received?.authorization).toBe(`Bearer ${API_KEY}`);
    expect(received?.parts.sort()).toEqual(["configuration", "file"]);
    expect(received?.file).toEqual({ name: "report.md", type: "text/markdown", text: "# Report\n\nBody text." });
    expect(received?.configuration).toEqual({
      tier: "fast",
      version: "latest",
      user_metadata: { pipeline_job_id: "job-42" },
      webhook_configurations: [
        {
          webhook_url: "https://api.example.com/webhooks/llamaparse",
          webhook_headers: { "X-Pipeline": "upload-pipeline" },
          webhook_events: ["parse.success", "parse.partial_success", "parse.error", "parse.cancelled"],
          webhook_output_format: "json",
          webhook_signing_secret: "whsec-per-job-secret-0123456789",
        },
      ],
    });
  });

  it("defaults to the cost_effective tier, empty webhook headers, and no user_metadata without tags", async () => {
    server.use(uploadHandler);
    await createLlamaParseClient({ apiKey: API_KEY, baseURL: BASE }).submitParse(submitInput);
    expect(received?.configuration).toMatchObject({ tier: "cost_effective", version: "latest" });
    expect(received?.configuration).not.toHaveProperty("user_metadata");
    expect((received!.configuration!.webhook_configurations as Array<Record<string, unknown>>)[0]!.webhook_headers).toEqual({});
  });

  it("passes project_id as a query parameter when configured", async () => {
    server.use(uploadHandler);
    await client({ projectId: "proj-9" }).submitParse(submitInput);
    expect(received?.query.get("project_id")).toBe("proj-9");
  });

  it("does not retry a failed upload itself (no second billed job)", async () => {
    let calls = 0;
    server.use(
      http.post(`${BASE}/api/v2/parse/upload`, () => {
        calls++;
        return HttpResponse.json({ detail: "Service unavailable" }, { status: 503 });
      }),
    );
    expect(await rejectionOf(client().submitParse(submitInput))).toMatchObject({ code: "llamaparse_unavailable", errorClass: "transient", status: 503 });
    expect(calls).toBe(1);
  });

  it("does not follow a redirect with the file (fetch would keep a copy of the whole upload to re-send it)", async () => {
    let redirected = 0;
    server.use(
      http.post(`${BASE}/api/v2/parse/upload`, () => new HttpResponse(null, { status: 307, headers: { location: `${BASE}/api/v2/parse/upload-elsewhere` } })),
      http.post(`${BASE}/api/v2/parse/upload-elsewhere`, () => {
        redirected++;
        return HttpResponse.json({ id: JOB_ID, project_id: "proj-1", status: "PENDING", created_at: "2025-01-01T00:00:00Z", tier: "fast" });
      }),
    );
    expect(await rejectionOf(client().submitParse(submitInput))).toMatchObject({ code: "llamaparse_connection", errorClass: "transient" });
    expect(redirected).toBe(0);
  });
});

describe("getParseJob", () => {
  it("asks for expand=markdown and returns the pages in order, failed pages apart", async () => {
    server.use(
      http.get(`${BASE}/api/v2/parse/:id`, ({ request, params }) => {
        received = {
          authorization: request.headers.get("authorization"),
          parts: [],
          file: undefined,
          configuration: undefined,
          query: new URL(request.url).searchParams,
        };
        return HttpResponse.json({
          job: { id: params.id, project_id: "proj-1", status: "COMPLETED", error_message: null, created_at: "2025-01-01T00:00:00Z" },
          markdown: {
            pages: [
              { page_number: 2, markdown: "## Two", success: true },
              { page_number: 1, markdown: "# One", success: true },
              { page_number: 3, error: "could not render page", success: false },
            ],
          },
        });
      }),
    );
    const job = await client().getParseJob(JOB_ID, { expand: ["markdown"] });
    expect(received?.query.getAll("expand")).toEqual(["markdown"]);
    expect(job).toEqual({
      id: JOB_ID,
      status: "COMPLETED",
      errorMessage: null,
      pages: [
        { pageNumber: 1, markdown: "# One" },
        { pageNumber: 2, markdown: "## Two" },
      ],
      failedPages: [{ pageNumber: 3, error: "could not render page" }],
      markdownFull: undefined,
    });
  });

  it("reads a FAILED job's error_message, with no markdown and no expand", async () => {
    server.use(
      http.get(`${BASE}/api/v2/parse/:id`, ({ request, params }) => {
        expect(new URL(request.url).searchParams.has("expand")).toBe(false);
        return HttpResponse.json({ job: { id: params.id, project_id: "p", status: "FAILED", error_message: "unsupported file" } });
      }),
    );
    await expect(client().getParseJob(JOB_ID)).resolves.toMatchObject({ status: "FAILED", errorMessage: "unsupported file", pages: [] });
  });

  it("a malformed answer is a transient llamaparse_bad_response, not an empty document", async () => {
    server.use(http.get(`${BASE}/api/v2/parse/:id`, () => HttpResponse.json({ job: { id: JOB_ID, status: "DONE" } })));
    expect(await rejectionOf(client().getParseJob(JOB_ID, { expand: ["markdown"] }))).toMatchObject({
      code: "llamaparse_bad_response",
      errorClass: "transient",
    });
  });
});

describe("findParseJobs", () => {
  it("pages through jobs created since the given time and keeps those whose tags match", async () => {
    const seenQueries: URLSearchParams[] = [];
    server.use(
      http.get(`${BASE}/api/v2/parse`, ({ request }) => {
        const q = new URL(request.url).searchParams;
        seenQueries.push(q);
        if (!q.get("page_token")) {
          return HttpResponse.json({
            items: [
              { id: "a", project_id: "p", status: "COMPLETED", created_at: "2025-01-01T00:00:01Z", user_metadata: { pipeline_job_id: "other" } },
              { id: "b", project_id: "p", status: "RUNNING", created_at: "2025-01-01T00:00:02Z", user_metadata: null },
            ],
            next_page_token: "page-2",
          });
        }
        return HttpResponse.json({
          items: [{ id: "c", project_id: "p", status: "PENDING", created_at: "2025-01-01T00:00:03Z", user_metadata: { pipeline_job_id: "job-42", x: "y" } }],
          next_page_token: null,
        });
      }),
    );
    const found = await client().findParseJobs({ createdAfter: new Date("2025-01-01T00:00:00Z"), tags: { pipeline_job_id: "job-42" } });
    expect(found).toEqual([{ id: "c", status: "PENDING", createdAt: "2025-01-01T00:00:03Z", tags: { pipeline_job_id: "job-42", x: "y" } }]);
    expect(seenQueries[0]!.get("created_at_on_or_after")).toBe("2025-01-01T00:00:00.000Z");
    expect(seenQueries[1]!.get("page_token")).toBe("page-2");
  });
});

describe("findParseJobs without a list endpoint", () => {
  it("answers a distinct permanent llamaparse_lookup_unavailable, not 'job not found'", async () => {
    server.use(http.get(`${BASE}/api/v2/parse`, () => HttpResponse.json({ detail: "Not Found" }, { status: 404 })));
    const err = await rejectionOf(client().findParseJobs({ createdAfter: new Date(0), tags: { pipeline_job_id: "x" } }));
    expect(err).toMatchObject({ code: "llamaparse_lookup_unavailable", errorClass: "permanent", status: 404 });
  });
});

describe("error mapping", () => {
  const failWith = (status: number, body: Record<string, unknown>) =>
    server.use(http.get(`${BASE}/api/v2/parse/:id`, () => HttpResponse.json(body, { status })));

  it.each([
    [401, { detail: "Invalid API key" }, "llamaparse_unauthorized"],
    [402, { detail: "Insufficient credits" }, "llamaparse_payment_required"],
    [404, { detail: "Job not found" }, "llamaparse_not_found"],
    [400, { detail: "Bad request" }, "llamaparse_bad_request"],
  ])("%i → permanent %s", async (status, body, code) => {
    failWith(status, body);
    const err = await rejectionOf(client().getParseJob(JOB_ID));
    expect(err).toMatchObject({ code, errorClass: "permanent", status });
    expect(err.message).toContain(body.detail);
  });

  it("422 with a detail list → permanent, naming the field", async () => {
    failWith(422, { detail: [{ loc: ["body", "configuration", "tier"], msg: "Input should be 'fast' or 'agentic'", type: "enum" }] });
    const err = await rejectionOf(client().getParseJob(JOB_ID));
    expect(err).toMatchObject({ code: "llamaparse_bad_request", errorClass: "permanent", status: 422 });
    expect(err.message).toContain("body.configuration.tier: Input should be");
  });

  it("429 → transient, with retryAfterMs only if a header says", async () => {
    failWith(429, { detail: "Too many requests" });
    expect(await rejectionOf(client().getParseJob(JOB_ID))).toMatchObject({
      code: "llamaparse_rate_limited",
      errorClass: "transient",
      retryAfterMs: undefined,
    });
    server.use(http.get(`${BASE}/api/v2/parse/:id`, () => HttpResponse.json({ detail: "slow down" }, { status: 429, headers: { "retry-after": "2" } })));
    expect((await rejectionOf(client().getParseJob(JOB_ID))).retryAfterMs).toBe(2000);
  });

  it.each([500, 502, 503])("%i → transient llamaparse_unavailable", async (status) => {
    failWith(status, { detail: "Internal error" });
    expect(await rejectionOf(client().getParseJob(JOB_ID))).toMatchObject({ code: "llamaparse_unavailable", errorClass: "transient", status });
  });

  it("a network failure → transient llamaparse_connection", async () => {
    server.use(http.get(`${BASE}/api/v2/parse/:id`, () => HttpResponse.error()));
    expect(await rejectionOf(client().getParseJob(JOB_ID))).toMatchObject({ code: "llamaparse_connection", errorClass: "transient" });
  });

  it("a timeout → transient timeout", async () => {
    server.use(
      http.get(`${BASE}/api/v2/parse/:id`, async () => {
        await new Promise((r) => setTimeout(r, 200));
        return HttpResponse.json({});
      }),
    );
    expect(await rejectionOf(client({ timeoutMs: 20 }).getParseJob(JOB_ID))).toMatchObject({ code: "timeout", errorClass: "transient" });
  });

  it("the API key never appears in an error message", async () => {
    failWith(401, { detail: `Invalid API key ${API_KEY}` });
    const err = await rejectionOf(client().getParseJob(JOB_ID));
    expect(err.message).not.toContain(API_KEY);
  });
});
