/**
 * Fault plans and the admin API: validation that names the field, outages over time windows,
 * bursts, seeded error rates that replay identically, latency, hangs, malformed bodies,
 * stats and reset; the same handlers served in-process with msw's setupServer.
 */
import fc from "fast-check";
import { setupServer } from "msw/node";
import { describe, expect, it } from "vitest";
import { createMocks, goDuration, parseFaultPlan, FaultPlanError, type FaultPlanInput } from "../../mocks/index.ts";
import { FaultEngine, faultLogLines } from "../../mocks/shared/faults.ts";
import { rngFromDigest, sha256Hex } from "../../mocks/shared/rng.ts";
import { startMockServer, type MockServer } from "../../mocks/server.ts";
import { useMockServer } from "../support/mockServer.ts";

let server: MockServer;
useMockServer({ seed: 9 }, (started) => {
  server = started;
});

const embed = (input = "x", signal?: AbortSignal) =>
  fetch(`${server.urls.openai}/embeddings`, {
    method: "POST",
    headers: { authorization: `Bearer ${server.env.OPENAI_API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "text-embedding-3-small", input, encoding_format: "float", dimensions: 4 }),
    signal,
  });

const admin = (path: string, body?: unknown) =>
  fetch(
    `${server.urls.admin}/${path}`,
    body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body) },
  );

describe("the admin API", () => {
  it("sets a valid plan and returns it with defaults filled in", async () => {
    const res = await admin("faults", { openai: { errors: [{ fault: 503, rate: 0.25 }] } });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ openai: { errors: [{ fault: 503, rate: 0.25 }], bursts: [], outages: [], hangMs: 60_000 } });
    expect(await (await admin("faults")).json()).toMatchObject({ openai: { errors: [{ fault: 503, rate: 0.25 }] } });
  });

  it("refuses a bad plan with 400 naming each bad field, and keeps the old plan", async () => {
    await admin("faults", { storage: { errors: [{ fault: 500, rate: 0.1 }] } });
    const res = await admin("faults", { openai: { errors: [{ fault: 503, rate: 1.5 }], outages: [{ startMs: 10, endMs: 5 }] }, webhooks: { dorp: {} } });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: string; issues: Array<{ path: string; message: string }> };
    expect(body.issues.map((i) => i.path)).toEqual(["openai.errors[0].rate", "openai.outages[0].endMs", "webhooks"]);
    expect(body.error).toContain("openai.errors[0].rate");
    expect(body.issues[2]!.message).toContain("dorp");
    expect((await admin("faults", "{not json")).status).toBe(400);
    expect(await (await admin("faults")).json()).toMatchObject({ storage: { errors: [{ fault: 500, rate: 0.1 }] } });
  });

  it("counts requests by route and status, faults and 429s; reset zeroes them", async () => {
    server.mocks.setFaults({ openai: { bursts: [{ fault: 429, start: 2, count: 1 }] } });
    await embed();
    await embed();
    await embed();
    const stats = (await (await admin("stats")).json()) as ReturnType<typeof server.mocks.stats>;
    expect(stats.requests["openai.embeddings"]).toEqual({ "200": 2, "429": 1 });
    expect(stats.faults["openai.embeddings"]).toEqual({ "429": 1 });
    expect(stats.rateLimited).toEqual({ total: 1, byRoute: { "openai.embeddings": 1 } });
    expect(stats.openai.usage["text-embedding-3-small"]).toEqual({ requests: 2, inputs: 2, prompt_tokens: 2 });
    expect((await admin("reset", {})).status).toBe(200);
    const after = (await (await admin("stats")).json()) as ReturnType<typeof server.mocks.stats>;
    expect(after.requests).toEqual({});
    expect(after.storage).toEqual({ buckets: 1, objects: 0, bytes: 0 });
  });

  it("is never faulted", async () => {
    server.mocks.setFaults({ openai: { errors: [{ fault: 500, rate: 1 }] }, storage: { errors: [{ fault: 500, rate: 1 }] } });
    expect((await admin("health")).status).toBe(200);
  });
});

describe("fault kinds", () => {
  it("an outage fails every request inside its window only", async () => {
    const clock = { now: 1_000_000 };
    const mocks = createMocks({ now: () => clock.now, faults: { openai: { outages: [{ startMs: 100, endMs: 200, fault: 503 }] } } });
    const msw = setupServer(...mocks.handlers);
    msw.listen({ onUnhandledFrame: "error" });
    try {
      const call = () =>
        fetch("http://openai.test/v1/embeddings", {
          method: "POST",
          headers: { authorization: `Bearer ${mocks.keys.openai}`, "content-type": "application/json" },
          body: JSON.stringify({ model: "text-embedding-3-small", input: "x", dimensions: 2 }),
        }).then((r) => r.status);
      expect(await call()).toBe(200);
      clock.now += 150;
      expect(await call()).toBe(503);
      clock.now += 100;
      expect(await call()).toBe(200);
    } finally {
      msw.close();
      await mocks.close();
    }
  });

  it("a phase outage and phase error rate apply only while the runner has switched the phase on; switching keeps counters and log", async () => {
    server.mocks.setFaults({
      openai: { outages: [{ fault: 503, phase: "embed-down" }] },
      storage: { errors: [{ fault: 500, rate: 1, phase: "storage-flaky" }] },
    });
    const key = server.env.SUPABASE_SERVICE_ROLE_KEY!;
    const buckets = () => fetch(`${server.urls.storage}/bucket`, { headers: { authorization: `Bearer ${key}` } }).then((r) => r.status);
    expect((await embed("a")).status).toBe(200);
    expect(await buckets()).toBe(200);
    expect(await (await admin("phases", { phase: "embed-down", active: true })).json()).toEqual({ active: ["embed-down"], faults: {} });
    expect((await embed("a")).status).toBe(503);
    expect((await embed("b")).status).toBe(503);
    expect(await buckets()).toBe(200);
    await admin("phases", { phase: "storage-flaky", active: true });
    expect(await buckets()).toBe(500);
    expect(await (await admin("phases")).json()).toEqual({ active: ["embed-down", "storage-flaky"], faults: { "embed-down": 2, "storage-flaky": 1 } });
    await admin("phases", { phase: "embed-down", active: false });
    expect((await embed("a")).status).toBe(200);
    // Occurrences kept counting across the switches ("a" was refused on its 2nd try, "b" on its 1st), and the log kept every fault.
    const lines = faultLogLines(server.mocks.faultLog()).filter((l) => l.startsWith("openai"));
    expect(lines.map((l) => l.replace(/text-embedding-3-small:\S+ /, "")).sort()).toEqual([
      "openai openai.embeddings #1 → 503 (outage)",
      "openai openai.embeddings #2 → 503 (outage)",
    ]);
    expect(server.mocks.stats().requests["openai.embeddings"]).toEqual({ "200": 2, "503": 2 });
  });

  it("refuses a phase switch naming the field: a phase no rule names, a missing or wrong field", async () => {
    server.mocks.setFaults({ openai: { outages: [{ fault: 503, phase: "embed-down" }] } });
    const unknown = await admin("phases", { phase: "embed-dwon", active: true });
    expect(unknown.status).toBe(400);
    expect(((await unknown.json()) as { error: string }).error).toContain('no rule of the plan in force names phase "embed-dwon"; its phases: embed-down');
    const bad = await admin("phases", { phase: "Embed Down", active: "yes" });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { issues: Array<{ path: string }> }).issues.map((i) => i.path)).toEqual(["phase", "active"]);
    expect((await admin("phases", "{not json")).status).toBe(400);
    expect(await (await admin("phases")).json()).toEqual({ active: [], faults: {} });
  });

  it("an outage is a window or a phase, never both or neither", () => {
    const issues = (outage: object) => {
      try {
        parseFaultPlan({ openai: { outages: [outage] } });
        return [];
      } catch (err) {
        return (err as FaultPlanError).issues.map((i) => `${i.path}: ${i.message}`);
      }
    };
    expect(issues({ fault: 503, phase: "down" })).toEqual([]);
    expect(issues({ fault: 503 })[0]).toContain('openai.outages[0]: give either "startMs" and "endMs" (a window on the plan clock) or "phase"');
    expect(issues({ fault: 503, startMs: 0, endMs: 10, phase: "down" })[0]).toContain("give either");
    expect(issues({ fault: 503, startMs: 0 })).toEqual(["openai.outages[0].endMs: startMs and endMs go together"]);
  });

  it("a burst fails requests start … start+count-1 of the matching routes", async () => {
    server.mocks.setFaults({ storage: { bursts: [{ fault: 503, start: 2, count: 2, routes: ["storage.bucket.*"] }] } });
    const key = server.env.SUPABASE_SERVICE_ROLE_KEY!;
    const statuses = [];
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${server.urls.storage}/bucket`, { headers: { authorization: `Bearer ${key}` } });
      const body = (await res.json()) as { statusCode?: string };
      // As the server sends it: HTTP 400 with the logical 503 in the body.
      statuses.push(res.status === 400 ? `400/${body.statusCode}` : String(res.status));
    }
    expect(statuses).toEqual(["200", "400/503", "400/503", "200", "200"]);
  });

  it("answers unknown routes and oversized bodies in each service's own error shape", async () => {
    const openai = await fetch(`${server.urls.openai}/nothing-here`, { method: "POST" });
    expect(openai.status).toBe(404);
    expect(await openai.json()).toEqual({ error: { message: "Invalid URL (POST /v1/nothing-here)", type: "invalid_request_error", param: null, code: null } });
    const storage = await fetch(`${server.urls.storage}/nothing-here`);
    expect(storage.status).toBe(400);
    expect(await storage.json()).toMatchObject({ statusCode: "404", error: "Not Found" });
    const llamaparse = await fetch(`${server.urls.llamaparse}/api/v2/nothing-here`);
    expect(llamaparse.status).toBe(404);
    expect(await llamaparse.json()).toEqual({ detail: "Not Found" });
    const small = await startMockServer({ port: 0, maxBodyBytes: 1024 });
    try {
      const big = await fetch(`${small.urls.openai}/embeddings`, { method: "POST", headers: { "content-type": "application/json" }, body: "x".repeat(4096) });
      expect(big.status).toBe(413);
      expect(((await big.json()) as { error: { type: string } }).error.type).toBe("invalid_request_error");
      const put = await fetch(`${small.urls.storage}/object/documents/a.md`, { method: "PUT", body: "x".repeat(4096) });
      expect(put.status).toBe(400);
      expect(await put.json()).toMatchObject({ statusCode: "413", code: "EntityTooLarge" });
    } finally {
      await small.close();
    }
  });

  it("latency delays the answer by the drawn amount", async () => {
    server.mocks.setFaults({ openai: { latency: { dist: "uniform", minMs: 80, maxMs: 100 } } });
    const t0 = performance.now();
    expect((await embed()).status).toBe(200);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(75);
  });

  it("a hang holds the request until the client gives up", async () => {
    server.mocks.setFaults({ openai: { bursts: [{ fault: "hang", start: 1, count: 1 }] } });
    const t0 = performance.now();
    const error = await embed("x", AbortSignal.timeout(150)).catch((e: unknown) => e);
    expect((error as Error).name).toBe("TimeoutError");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(140);
    expect((await embed()).status).toBe(200);
  });

  it("a hang ends in a reset after hangMs", async () => {
    server.mocks.setFaults({ storage: { hangMs: 50, bursts: [{ fault: "hang", start: 1, count: 1 }] } });
    const error = await fetch(`${server.urls.storage}/bucket`, { headers: { authorization: `Bearer ${server.env.SUPABASE_SERVICE_ROLE_KEY}` } }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(TypeError);
    expect(server.mocks.stats().requests["storage.bucket.list"]).toEqual({ hang: 1 });
  });

  it("a malformed answer keeps the 200 but cuts the JSON short", async () => {
    server.mocks.setFaults({ openai: { bursts: [{ fault: "malformed", start: 1, count: 1 }] } });
    const res = await embed();
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text.startsWith('{"object":"list"')).toBe(true);
    expect(() => JSON.parse(text)).toThrow();
  });

  it("a reset drops the connection in-process too", async () => {
    const mocks = createMocks({ faults: { llamaparse: { bursts: [{ fault: "reset", start: 1, count: 1 }] } } });
    const msw = setupServer(...mocks.handlers);
    msw.listen({ onUnhandledFrame: "error" });
    try {
      const error = await fetch("http://llama.test/api/v2/parse/abc", { headers: { authorization: `Bearer ${mocks.keys.llamaCloud}` } }).catch(
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(TypeError);
      const next = await fetch("http://llama.test/api/v2/parse/abc", { headers: { authorization: `Bearer ${mocks.keys.llamaCloud}` } });
      expect(next.status).toBe(404);
    } finally {
      msw.close();
      await mocks.close();
    }
  });
});

describe("seeded replay", () => {
  const plan = (rate: number): FaultPlanInput => ({
    openai: {
      errors: [
        { fault: 500, rate },
        { fault: 429, rate },
      ],
      latency: { dist: "exponential", meanMs: 50 },
    },
  });

  // For any seed and error rates, two engines fed the same requests make the same decisions (fault and latency).
  it("a fault plan with a seed replays identically", () => {
    fc.assert(
      fc.property(
        fc.integer(),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.array(fc.constantFrom("openai.embeddings", "openai.other"), { maxLength: 40 }),
        (seed, rate, routes) => {
          const a = new FaultEngine(seed, parseFaultPlan(plan(rate)));
          const b = new FaultEngine(seed, parseFaultPlan(plan(rate)));
          const decide = (e: FaultEngine) => routes.map((r) => e.decide("openai", r)).map((d) => [d.fault, d.latencyMs]);
          expect(decide(b)).toEqual(decide(a));
        },
      ),
    );
  });

  // Over HTTP, the same seed and the same request sequence give the same statuses.
  it("the same seed and requests give the same answers over HTTP", async () => {
    const run = async () => {
      server.mocks.setFaults({ seed: 77, openai: { errors: [{ fault: 503, rate: 0.4 }] } });
      server.mocks.reset();
      const statuses = [];
      for (let i = 0; i < 20; i++) statuses.push((await embed(`input ${i}`)).status);
      return statuses;
    };
    const first = await run();
    expect(await run()).toEqual(first);
    expect(first).toContain(503);
    expect(first).toContain(200);
  });

  it("a different seed gives a different sequence", () => {
    const seq = (seed: number) => {
      const e = new FaultEngine(seed, parseFaultPlan({ openai: { errors: [{ fault: 503, rate: 0.5 }] } }));
      return Array.from({ length: 64 }, () => e.decide("openai", "openai.embeddings").fault);
    };
    expect(seq(1)).toEqual(seq(1));
    expect(seq(1)).not.toEqual(seq(2));
  });
});

describe("plan validation", () => {
  it("throws FaultPlanError naming the field", () => {
    expect(() => parseFaultPlan({ llamaparse: { bursts: [{ fault: 418, start: 1, count: 1 }] } })).toThrow(FaultPlanError);
    expect(() => parseFaultPlan({ storage: { latency: { dist: "uniform", minMs: 5, maxMs: 1 } } })).toThrow(/storage\.latency\.maxMs/);
    expect(() => createMocks({ faults: { openai: { hangMs: -1 } } })).toThrow(/openai\.hangMs/);
    expect(() => parseFaultPlan({ openai: { batches: { wrongDimensions: { rate: 1, dimensions: 0 } } } })).toThrow(
      /openai\.batches\.wrongDimensions\.dimensions/,
    );
    expect(() => parseFaultPlan({ openai: { batches: { failed: { rate: 2 } } } })).toThrow(/openai\.batches\.failed\.rate/);
  });
});

describe("goDuration", () => {
  it("formats like Go's time.Duration", () => {
    expect([360_000, 1_000, 12, 1_200, 2_812, 0, 3_600_000, 90_500, 0.5].map(goDuration)).toEqual([
      "6m0s",
      "1s",
      "12ms",
      "1.2s",
      "2.812s",
      "0s",
      "1h0m0s",
      "1m30.5s",
      "500µs",
    ]);
  });
});

describe("decisions keyed by what the request is", () => {
  // 12 distinct requests, each tried 3 times; two interleavings that keep each request's own order.
  const requests = Array.from({ length: 12 }, (_, i) => `inputs-${i}`);
  const inOrder = requests.flatMap((r) => [r, r, r]);
  const interleaved = [1, 2, 3].flatMap(() => [...requests].reverse());
  const logOf = (plan: FaultPlanInput, order: string[]) => {
    const engine = new FaultEngine(5, parseFaultPlan(plan));
    for (const fingerprint of order) engine.decide("openai", "openai.embeddings", fingerprint);
    return faultLogLines(engine.log);
  };

  it("gives the same request the same fault whatever the arrival order, and logs it", () => {
    const plan: FaultPlanInput = { openai: { errors: [{ fault: 500, rate: 0.3 }], bursts: [{ fault: 429, start: 1, count: 2, rate: 0.5 }] } };
    const log = logOf(plan, inOrder);
    expect(log).toEqual(logOf(plan, interleaved));
    expect(log.some((l) => l.includes("→ 429 (burst)"))).toBe(true);
    expect(log.some((l) => l.includes("→ 500 (error)"))).toBe(true);
    // A partial burst picks requests, not tries: a picked request fails its first two tries.
    const burst = log.filter((l) => l.includes("(burst)"));
    for (const line of burst.filter((l) => l.includes("#1 "))) expect(burst).toContain(line.replace("#1 ", "#2 "));
  });

  it("a burst counted in arrival order (of: route) changes with the order: the fault-log comparison catches it", () => {
    const plan: FaultPlanInput = { openai: { bursts: [{ fault: 503, start: 3, count: 4, of: "route" }] } };
    expect(logOf(plan, inOrder)).toHaveLength(4);
    expect(logOf(plan, inOrder)).not.toEqual(logOf(plan, interleaved));
  });

  it("keys embeddings by their inputs over HTTP: the same inputs fail the same way in any order", async () => {
    const run = async (order: number[]) => {
      server.mocks.setFaults({ seed: 3, openai: { errors: [{ fault: 503, rate: 0.5 }] } });
      const statuses: Record<number, number> = {};
      for (const i of order) statuses[i] = (await embed(`input ${i}`)).status;
      return { statuses, log: faultLogLines(server.mocks.faultLog()) };
    };
    const forward = await run([0, 1, 2, 3, 4, 5, 6, 7]);
    const backward = await run([7, 6, 5, 4, 3, 2, 1, 0]);
    expect(backward).toEqual(forward);
    expect(Object.values(forward.statuses)).toContain(503);
    expect(Object.values(forward.statuses)).toContain(200);
  });

  it("the embedding PRNG is seeded from 128 bits of the digest, not a 32-bit fold of it", () => {
    const a = Buffer.from(sha256Hex("some chunk text"), "hex");
    // Same XOR of the first three words (the old 32-bit seed), different digest.
    const b = Buffer.from(a);
    b.writeUInt32LE((a.readUInt32LE(0) ^ 0xdeadbeef) >>> 0, 0);
    b.writeUInt32LE((a.readUInt32LE(4) ^ 0xdeadbeef) >>> 0, 4);
    const draws = (d: Buffer) => Array.from({ length: 4 }, rngFromDigest(d));
    expect(draws(a)).toEqual(draws(Buffer.from(a)));
    expect(draws(b)).not.toEqual(draws(a));
    const c = Buffer.from(a);
    c.writeUInt32LE((a.readUInt32LE(12) ^ 1) >>> 0, 12); // the fourth word counts too
    expect(draws(c)).not.toEqual(draws(a));
  });
});

describe("ids unique per mock instance", () => {
  it("a restarted mock gives new parse job and webhook event ids for the same file, with the same draws", () => {
    const job = (mocks: ReturnType<typeof createMocks>) =>
      mocks.state.llamaparse.create({
        input: { bytes: new TextEncoder().encode("# same file\n"), filename: "a.md", mime: "text/markdown" },
        tier: "fast",
        version: "latest",
        name: null,
        userMetadata: null,
        webhooks: [],
      });
    const plan: FaultPlanInput = { llamaparse: { errors: [{ fault: 500, rate: 0.5 }] } };
    const first = createMocks({ seed: 4, faults: plan });
    const second = createMocks({ seed: 4, faults: plan });
    try {
      const a = job(first);
      const b = job(second);
      expect(a.key).toBe(b.key);
      expect(a.id).not.toBe(b.id);
      // Decisions stay seeded: the same request gets the same answer from both instances.
      const decisions = (m: ReturnType<typeof createMocks>) =>
        Array.from({ length: 16 }, (_, i) => m.state.faults.decide("llamaparse", "llamaparse.get", `${a.key}-${i}`).fault);
      expect(decisions(first)).toEqual(decisions(second));
    } finally {
      void first.close();
      void second.close();
    }
  });
});
