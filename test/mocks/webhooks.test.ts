/**
 * The LlamaParse webhook sender (SPEC §6/§7): payload and headers, the signature, the retry
 * policy (scaled-down delays), and each webhook fault of the plan.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { FaultPlanInput } from "../../mocks/index.ts";
import { startMockServer, type MockServer } from "../../mocks/server.ts";

interface Received {
  body: string;
  headers: IncomingHttpHeaders;
  path: string;
  at: number;
}

/** A local receiver whose answer to the n-th request (1-based) is chosen by `respond`. */
async function receiver(respond: (n: number) => number | "hang" = () => 200) {
  const received: Received[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      received.push({ body: Buffer.concat(chunks).toString("utf8"), headers: req.headers, path: req.url ?? "", at: performance.now() });
      const answer = respond(received.length);
      if (answer === "hang") return;
      res.writeHead(answer).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    received,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const SECRET = "whsec_test_secret";
const open: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  while (open.length) await open.pop()!.close();
});

async function mocks(faults: FaultPlanInput = {}, extra: { webhookBaseUrl?: string; timeoutMs?: number } = {}): Promise<MockServer> {
  const server = await startMockServer({
    port: 0,
    seed: 11,
    faults: { ...faults, llamaparse: { schedule: { pending: { dist: "fixed", ms: 5 }, running: { dist: "fixed", ms: 30 } } } },
    webhook: { retryDelaysMs: [40, 80], timeoutMs: extra.timeoutMs ?? 2_000 },
    webhookBaseUrl: extra.webhookBaseUrl,
  });
  open.push(server);
  return server;
}

async function submit(server: MockServer, hook: Record<string, unknown>, content = "# Doc"): Promise<string> {
  const form = new FormData();
  form.append("file", new File([content], "doc.md", { type: "text/markdown" }));
  form.append("configuration", JSON.stringify({ tier: "fast", version: "latest", webhook_configurations: [hook] }));
  const res = await fetch(`${server.urls.llamaparse}/api/v2/parse/upload`, {
    method: "POST",
    headers: { authorization: `Bearer ${server.env.LLAMA_CLOUD_API_KEY}` },
    body: form,
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { id: string }).id;
}

/** Waits until the job's schedule has run and every delivery (retries, replays) is done. */
async function settle(server: MockServer, ms = 120): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
  await server.mocks.webhooksIdle();
}

const verifies = (r: Received, secret = SECRET) => {
  const header = String(r.headers["lc-signature"] ?? "");
  const expected = `sha256=${createHmac("sha256", secret).update(r.body).digest("hex")}`;
  return header.length === expected.length && timingSafeEqual(Buffer.from(header), Buffer.from(expected));
};

describe("a genuine delivery", () => {
  it("carries the SPEC §6 body and headers, signed with the job's secret", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks();
    const before = Date.now() / 1000;
    const jobId = await submit(server, {
      webhook_url: `${rx.url}/webhooks/llamaparse`,
      webhook_signing_secret: SECRET,
      webhook_output_format: "json",
      webhook_events: ["parse.success"],
      webhook_headers: { "X-Tenant": "t1" },
    });
    await settle(server);
    expect(rx.received).toHaveLength(1);
    const r = rx.received[0]!;
    const body = JSON.parse(r.body) as { event_id: string; event_type: string; timestamp: number; data: { id: string; job_id: string } };
    expect(Object.keys(body)).toEqual(["event_id", "event_type", "timestamp", "data"]);
    expect(body.event_type).toBe("parse.success");
    expect(body.data).toEqual({ id: jobId, job_id: jobId });
    expect(body.timestamp).toBeGreaterThanOrEqual(before - 1);
    expect(body.timestamp).toBeLessThanOrEqual(Date.now() / 1000 + 1);
    expect(r.path).toBe("/webhooks/llamaparse");
    expect(r.headers["user-agent"]).toBe("llamaindex-webhook-service/1.0");
    expect(r.headers["x-webhook-event-id"]).toBe(body.event_id);
    expect(r.headers["x-webhook-event-type"]).toBe("parse.success");
    expect(r.headers["x-tenant"]).toBe("t1");
    expect(verifies(r)).toBe(true);
    expect(verifies(r, "another-secret")).toBe(false);
    expect(server.mocks.stats().webhooks.deliveries.genuine).toEqual({ delivered: 1 });
  });

  it("sends every event when webhook_events is absent, and the 'string' format as a JSON string", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks();
    await submit(server, { webhook_url: rx.url, webhook_signing_secret: SECRET });
    await settle(server);
    const types = rx.received.map((r) => JSON.parse(JSON.parse(r.body) as string) as { event_type: string }).map((b) => b.event_type);
    expect(types).toEqual(["parse.pending", "parse.running", "parse.success"]);
    expect(rx.received.every((r) => verifies(r))).toBe(true);
  });

  it("sends parse.error for a poisoned document", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks();
    await submit(server, { webhook_url: rx.url, webhook_output_format: "json", webhook_events: ["parse.success", "parse.error"] }, "bad %%POISON%% file");
    await settle(server);
    expect(rx.received.map((r) => (JSON.parse(r.body) as { event_type: string }).event_type)).toEqual(["parse.error"]);
  });

  it("never leaves this machine: a non-loopback URL is blocked, unless webhookBaseUrl redirects it", async () => {
    const rx = await receiver();
    open.push(rx);
    const blocked = await mocks();
    await submit(blocked, { webhook_url: "https://api.example.com/webhooks/llamaparse", webhook_events: ["parse.success"] });
    await settle(blocked);
    expect(blocked.state.webhooks.log.map((d) => d.outcome)).toEqual(["blocked"]);

    const redirected = await mocks({}, { webhookBaseUrl: rx.url });
    await submit(redirected, { webhook_url: "https://api.example.com/webhooks/llamaparse?x=1", webhook_events: ["parse.success"] });
    await settle(redirected);
    expect(rx.received.map((r) => r.path)).toEqual(["/webhooks/llamaparse?x=1"]);
  });
});

describe("the retry policy", () => {
  it("retries a non-2xx after the first delay, then the second, and stops at a 2xx", async () => {
    const rx = await receiver((n) => (n < 3 ? 500 : 204));
    open.push(rx);
    const server = await mocks();
    await submit(server, { webhook_url: rx.url, webhook_events: ["parse.success"], webhook_signing_secret: SECRET });
    await settle(server, 300);
    expect(rx.received).toHaveLength(3);
    const [a, b, c] = rx.received.map((r) => r.at);
    expect(b! - a!).toBeGreaterThanOrEqual(35);
    expect(c! - b!).toBeGreaterThanOrEqual(75);
    expect(new Set(rx.received.map((r) => r.body)).size).toBe(1);
    expect(server.state.webhooks.log[0]).toMatchObject({ kind: "genuine", attempts: [500, 500, 204], outcome: "delivered" });
  });

  it("gives up after 3 attempts", async () => {
    const rx = await receiver(() => 503);
    open.push(rx);
    const server = await mocks();
    await submit(server, { webhook_url: rx.url, webhook_events: ["parse.success"] });
    await settle(server, 300);
    expect(rx.received).toHaveLength(3);
    expect(server.mocks.stats().webhooks).toMatchObject({ attempts: 3, deliveries: { genuine: { failed: 1 } } });
  });

  it("treats a timeout as a failed attempt and retries", async () => {
    const rx = await receiver((n) => (n === 1 ? "hang" : 200));
    open.push(rx);
    const server = await mocks({}, { timeoutMs: 100 });
    await submit(server, { webhook_url: rx.url, webhook_events: ["parse.success"] });
    await settle(server, 400);
    expect(server.state.webhooks.log[0]).toMatchObject({ attempts: ["error", 200], outcome: "delivered" });
  });
});

describe("webhook faults", () => {
  const successOnly = (url: string) => ({ webhook_url: url, webhook_events: ["parse.success"], webhook_signing_secret: SECRET, webhook_output_format: "json" });

  it("duplicate: the same delivery arrives 1 + times times", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks({ webhooks: { duplicate: { rate: 1, times: 2 } } });
    await submit(server, successOnly(rx.url));
    await settle(server);
    expect(rx.received).toHaveLength(3);
    expect(new Set(rx.received.map((r) => r.body)).size).toBe(1);
    expect(new Set(rx.received.map((r) => r.headers["lc-signature"])).size).toBe(1);
    expect(server.mocks.stats().webhooks.deliveries).toMatchObject({ genuine: { delivered: 1 }, duplicate: { delivered: 2 } });
  });

  it("drop: nothing arrives", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks({ webhooks: { drop: { rate: 1 } } });
    await submit(server, successOnly(rx.url));
    await settle(server);
    expect(rx.received).toHaveLength(0);
    expect(server.mocks.stats().webhooks.deliveries.genuine).toEqual({ dropped: 1 });
  });

  it("forge: a copy with a bad signature arrives before the genuine one", async () => {
    const rx = await receiver((n) => (n === 1 ? 401 : 200));
    open.push(rx);
    const server = await mocks({ webhooks: { forge: { rate: 1 } } });
    await submit(server, successOnly(rx.url));
    await settle(server);
    expect(rx.received).toHaveLength(2);
    expect(verifies(rx.received[0]!)).toBe(false);
    expect(rx.received[0]!.body).toBe(rx.received[1]!.body);
    expect(verifies(rx.received[1]!)).toBe(true);
    expect(server.mocks.stats().webhooks.deliveries).toMatchObject({ forged: { rejected: 1 }, genuine: { delivered: 1 } });
  });

  it("forge with no-signature and replaceGenuine: only an unsigned copy arrives", async () => {
    const rx = await receiver(() => 401);
    open.push(rx);
    const server = await mocks({ webhooks: { forge: { rate: 1, mode: "no-signature", replaceGenuine: true } } });
    await submit(server, successOnly(rx.url));
    await settle(server);
    expect(rx.received).toHaveLength(1);
    expect(rx.received[0]!.headers["lc-signature"]).toBeUndefined();
  });

  it("delay: the delivery waits the drawn delay", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks({ webhooks: { delay: { rate: 1, latency: { dist: "fixed", ms: 150 } } } });
    const t0 = performance.now();
    await submit(server, successOnly(rx.url));
    await settle(server, 250);
    expect(rx.received).toHaveLength(1);
    // pending 5 ms + running 30 ms + delay 150 ms
    expect(rx.received[0]!.at - t0).toBeGreaterThanOrEqual(180);
  });

  it("reorder: a held delivery arrives after the next one", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks({ webhooks: { reorder: { rate: 1, events: ["parse.running"], maxHoldMs: 2_000 } } });
    await submit(server, { webhook_url: rx.url, webhook_events: ["parse.running", "parse.success"], webhook_output_format: "json" });
    await settle(server);
    expect(rx.received.map((r) => (JSON.parse(r.body) as { event_type: string }).event_type)).toEqual(["parse.success", "parse.running"]);
  });

  it("replay: the identical delivery arrives again later", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks({ webhooks: { replay: { rate: 1, afterMs: 60 } } });
    await submit(server, successOnly(rx.url));
    await settle(server, 200);
    expect(rx.received).toHaveLength(2);
    expect(rx.received[1]!.body).toBe(rx.received[0]!.body);
    expect(rx.received[1]!.headers["lc-signature"]).toBe(rx.received[0]!.headers["lc-signature"]);
    expect(rx.received[1]!.at - rx.received[0]!.at).toBeGreaterThanOrEqual(55);
    expect(server.mocks.stats().webhooks.deliveries.replay).toEqual({ delivered: 1 });
  });

  it("replay with staleSeconds: a validly signed copy with an old timestamp and the same event id", async () => {
    const rx = await receiver();
    open.push(rx);
    const server = await mocks({ webhooks: { replay: { rate: 1, afterMs: 10, staleSeconds: 600 } } });
    await submit(server, successOnly(rx.url));
    await settle(server, 150);
    const [genuine, replayed] = rx.received.map((r) => JSON.parse(r.body) as { event_id: string; timestamp: number });
    expect(replayed!.event_id).toBe(genuine!.event_id);
    expect(genuine!.timestamp - replayed!.timestamp).toBeCloseTo(600, 3);
    expect(verifies(rx.received[1]!)).toBe(true);
  });

  it("draws each fault per (document, event): the same seed drops the same documents", async () => {
    const run = async () => {
      const rx = await receiver();
      open.push(rx);
      const server = await mocks({ webhooks: { drop: { rate: 0.5 } } });
      const ids = [];
      for (let i = 0; i < 10; i++) ids.push(await submit(server, successOnly(rx.url), `# doc ${i}`));
      await settle(server, 150);
      const delivered = new Set(rx.received.map((r) => (JSON.parse(r.body) as { data: { job_id: string } }).data.job_id));
      return ids.map((id) => delivered.has(id));
    };
    const first = await run();
    expect(await run()).toEqual(first);
    expect(first).toContain(true);
    expect(first).toContain(false);
  });
});
