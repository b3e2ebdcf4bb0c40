/**
 * The shared rate governor on a real database: the server's word from one process slows every
 * process, the key's reported limit caps the deployment's ceiling, usage corrects the estimate,
 * and an unreachable database falls back to the process's own bucket with a warning.
 */
import { Writable } from "node:stream";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createLogger } from "../../src/logger.ts";
import { ManualClock } from "../../src/resilience/clock.ts";
import { budgetKey, LocalGovernor, SharedGovernor } from "../../src/resilience/governor.ts";
import { reserve, settle } from "../../src/resilience/governorQueries.ts";
import { OpenAIRateLimiter } from "../../src/resilience/rateLimiter.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";

const CEILING = { rpm: 600, tpm: 60_000 }; // 10 requests and 1,000 tokens per second
const T0 = new Date(Date.UTC(2026, 0, 1));
const at = (ms: number) => new Date(T0.getTime() + ms);

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(() => db.drop());

let keys = 0;
const take = (key: string, tokens: number, nowMs: number, holder = "p1") =>
  reserve(db.pool, { budgetKey: key, holder, requests: 1, tokens, ceiling: CEILING, ttlMs: 120_000, now: at(nowMs) });

describe("shared budget", () => {
  it("callers in any process queue for the same budget: a full minute's tokens, then the refill rate", async () => {
    const key = `t:${keys++}`;
    expect((await take(key, 60_000, 0, "p1")).waitMs).toBe(0);
    // The next 5,000 tokens wait for the refill: 5 s at 1,000 tokens/s, whichever process asks.
    expect((await take(key, 5_000, 0, "p2")).waitMs).toBeCloseTo(5_000, 0);
    expect((await take(key, 1_000, 0, "p3")).waitMs).toBeCloseTo(6_000, 0);
  });

  it("one process's 429 retry-after pauses every process", async () => {
    const key = `t:${keys++}`;
    const r = await take(key, 100, 0, "p1");
    await settle(db.pool, { reservationId: r.reservationId, pauseMs: 7_000, ceiling: CEILING, now: at(10) });
    expect((await take(key, 100, 20, "p2")).waitMs).toBeCloseTo(6_990, 0);
  });

  it("a 429 pause that holds callers while the real bucket is full costs the refill the bucket cannot hold", async () => {
    const key = `t:${keys++}`;
    expect((await take(key, 1_000, 0, "p1")).waitMs).toBe(0);
    const refused = await take(key, 0, 0, "p2");
    await settle(db.pool, { reservationId: refused.reservationId, pauseMs: 2_000, ceiling: CEILING, now: at(0) });
    // The real bucket is full again after 1 s of the pause and stops filling: when the pause ends
    // it holds 60,000 tokens, not 61,000. The full minute sends then; the next 1,000 a second later.
    expect((await take(key, 60_000, 0, "p3")).waitMs).toBeCloseTo(2_000, 0);
    expect((await take(key, 1_000, 0, "p1")).waitMs).toBeCloseTo(3_000, 0);
  });

  it("x-ratelimit-remaining from one answer lowers the level for all (less what was granted after it)", async () => {
    const key = `t:${keys++}`;
    const first = await take(key, 1_000, 0, "p1");
    await take(key, 2_000, 0, "p2"); // granted after `first`: the server had not counted it
    await settle(db.pool, { reservationId: first.reservationId, tokens: 1_000, remainingTokens: 10_000, ceiling: CEILING, now: at(0) });
    // Level = 10,000 − 2,000 = 8,000: a 9,000-token batch waits 1 s.
    expect((await take(key, 9_000, 0, "p3")).waitMs).toBeCloseTo(1_000, 0);
  });

  it("the key's x-ratelimit-limit lowers the deployment's ceiling (capacity and refill rate)", async () => {
    const key = `t:${keys++}`;
    const first = await take(key, 60_000, 0);
    await settle(db.pool, { reservationId: first.reservationId, tokens: 60_000, limitTokens: 6_000, ceiling: CEILING, now: at(0) });
    // Refill is now 100 tokens/s: 1,000 tokens take 10 s.
    expect((await take(key, 1_000, 0)).waitMs).toBeCloseTo(10_000, 0);
  });

  it("usage below the estimate is given back; settling again changes nothing", async () => {
    const key = `t:${keys++}`;
    const r = await take(key, 60_000, 0);
    expect(await settle(db.pool, { reservationId: r.reservationId, tokens: 50_000, ceiling: CEILING, now: at(0) })).toMatchObject({ settled: true });
    expect(await settle(db.pool, { reservationId: r.reservationId, tokens: 0, ceiling: CEILING, now: at(0) })).toMatchObject({ settled: false });
    expect((await take(key, 10_000, 0)).waitMs).toBe(0);
    expect((await take(key, 1_000, 0)).waitMs).toBeCloseTo(1_000, 0);
  });

  it("a call that was never sent gives back its request and its tokens", async () => {
    const key = `t:${keys++}`;
    const slow = { rpm: 1, tpm: 60_000 }; // one request a minute: a request kept would cost 60 s
    const r = await reserve(db.pool, { budgetKey: key, holder: "p1", requests: 1, tokens: 60_000, ceiling: slow, ttlMs: 120_000, now: at(0) });
    await settle(db.pool, { reservationId: r.reservationId, notSent: true, ceiling: slow, now: at(0) });
    const again = (requests: number, tokens: number) =>
      reserve(db.pool, { budgetKey: key, holder: "p2", requests, tokens, ceiling: slow, ttlMs: 120_000, now: at(0) });
    expect((await again(1, 0)).waitMs).toBe(0); // the request is back
    expect((await again(0, 60_000)).waitMs).toBe(0); // and the tokens
  });

  it("a 429's pause holds when another process's answer without one is settled meanwhile", async () => {
    const key = `t:${keys++}`;
    const limited = await take(key, 100, 0, "p1");
    const answered = await take(key, 100, 0, "p2");
    await settle(db.pool, { reservationId: limited.reservationId, pauseMs: 7_000, ceiling: CEILING, now: at(10) });
    await settle(db.pool, { reservationId: answered.reservationId, tokens: 100, ceiling: CEILING, now: at(20) });
    expect((await take(key, 100, 30, "p3")).waitMs).toBeCloseTo(6_980, 0);
  });

  it("x-ratelimit-remaining-requests lowers the request level for all (less the requests granted after it)", async () => {
    const key = `t:${keys++}`;
    const first = await take(key, 0, 0, "p1");
    await take(key, 0, 0, "p2"); // granted after `first`: the server had not counted it
    await settle(db.pool, { reservationId: first.reservationId, tokens: 0, remainingRequests: 5, ceiling: CEILING, now: at(0) });
    // Level = 5 − 1 = 4 requests: five more wait for one to refill, 100 ms at 10 requests/s.
    const five = await reserve(db.pool, { budgetKey: key, holder: "p3", requests: 5, tokens: 0, ceiling: CEILING, ttlMs: 120_000, now: at(0) });
    expect(five.waitMs).toBeCloseTo(100, 0);
  });

  it("the key's x-ratelimit-limit-requests lowers the deployment's request ceiling (capacity and refill rate)", async () => {
    const key = `t:${keys++}`;
    const minute = await reserve(db.pool, { budgetKey: key, holder: "p1", requests: 600, tokens: 0, ceiling: CEILING, ttlMs: 120_000, now: at(0) });
    await settle(db.pool, { reservationId: minute.reservationId, tokens: 0, limitRequests: 60, ceiling: CEILING, now: at(0) });
    // Refill is now 1 request/s, not the ceiling's 10.
    expect((await take(key, 0, 0)).waitMs).toBeCloseTo(1_000, 0);
  });

  it("a refund while another caller waits for its send time is credited only as far as the bucket can hold it when that caller sends", async () => {
    const key = `t:${keys++}`;
    const first = await take(key, 60_000, 0, "p1");
    expect((await take(key, 30_000, 0, "p2")).waitMs).toBeCloseTo(30_000, 0);
    // `first` used nothing. p2 still sends at 30 s; by then the server's bucket has refilled
    // 30,000, so only 30,000 of the 60,000 can be credited without exceeding it.
    await settle(db.pool, { reservationId: first.reservationId, tokens: 0, ceiling: CEILING, now: at(0) });
    expect((await take(key, 60_000, 0, "p3")).waitMs).toBeCloseTo(60_000, 0);
  });

  it("a refund is not held back by a request already sent and still in flight", async () => {
    const key = `t:${keys++}`;
    await take(key, 10_000, 0, "slow"); // sent at 0, answered only after everything below
    // 30 s later the bucket has refilled to its capacity: the slow request's share is paid.
    const unused = await take(key, 20_000, 30_000, "p2");
    await settle(db.pool, { reservationId: unused.reservationId, tokens: 0, ceiling: CEILING, now: at(30_000) });
    expect((await take(key, 60_000, 30_000, "p3")).waitMs).toBe(0);
  });

  it("a crashed holder's reservation stays spent and expires: the next settle drops it", async () => {
    const key = `t:${keys++}`;
    await take(key, 1_000, 0, "crashed"); // never settled
    const r = await take(key, 1_000, 0, "alive");
    const later = await settle(db.pool, { reservationId: r.reservationId, tokens: 1_000, ceiling: CEILING, now: at(121_000) });
    expect(later.expired).toBe(1);
    const { rows } = await db.pool.query("SELECT holder FROM upload_pipeline.rate_reservations WHERE budget_key = $1", [key]);
    expect(rows.map((x) => x.holder)).toEqual(["alive"]);
  });

  it("the budget key names provider, a fingerprint of the key and the model, never the key", () => {
    const k = budgetKey("openai", "sk-secret-value", "text-embedding-3-small");
    expect(k).toMatch(/^openai:[0-9a-f]{16}:text-embedding-3-small$/);
    expect(k).not.toContain("secret");
  });
});

describe("SharedGovernor", () => {
  it("with the database unreachable it warns once, paces with the process's own bucket, and tries the database again later", async () => {
    const lines: string[] = [];
    const destination = new Writable({
      write: (c, _e, cb) => {
        lines.push(String(c));
        cb();
      },
    });
    const log = createLogger({ level: "warn", destination });
    const dead = new pg.Pool({ connectionString: "postgres://nobody@127.0.0.1:9/none", connectionTimeoutMillis: 500 });
    dead.on("error", () => {});
    const clock = new ManualClock(1_000_000);
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 600, tokensPerMinute: 60_000, clock });
    const governor = new SharedGovernor({
      db: dead,
      budgetKey: "openai:x:m",
      holder: "p1",
      ceiling: CEILING,
      fallback: new LocalGovernor(limiter),
      log,
      clock,
      offlineMs: 10_000,
    });
    const a = await governor.acquire({ requests: 1, tokens: 500 });
    const b = await governor.acquire({ requests: 1, tokens: 500 });
    expect([a.kind, b.kind]).toEqual(["local", "local"]);
    expect(governor.offline).toBe(true);
    expect(limiter.snapshot().tokensAvailable).toBe(59_000); // spent from the local bucket
    await governor.settle(a, { usedTokens: 400 });
    expect(limiter.snapshot().tokensAvailable).toBe(59_100);
    const warnings = lines.filter((l) => l.includes("shared budget is unreachable"));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).not.toContain("nobody@"); // no connection string in the log
    await clock.advance(10_001);
    expect(governor.offline).toBe(false); // the next acquire asks the database again
    await dead.end();
  });

  /** A governor on the test database and a manual clock (the database's `now` follows it). */
  function sharedGovernor(clock: ManualClock, key = `g:${keys++}`): SharedGovernor {
    return new SharedGovernor({
      db: db.pool,
      budgetKey: key,
      holder: "p1",
      ceiling: CEILING,
      log: createLogger({ level: "silent" }),
      clock,
      dbNow: () => at(clock.now()),
      fallback: new LocalGovernor(new OpenAIRateLimiter({ requestsPerMinute: 600, tokensPerMinute: 60_000, clock })),
    });
  }

  it("acquires from the shared budget, waits for its send time, and settles with usage", async () => {
    const clock = new ManualClock(0);
    const governor = sharedGovernor(clock);
    const first = await governor.acquire({ requests: 1, tokens: 60_000 });
    expect(first.kind).toBe("shared");
    await governor.settle(first, { usedTokens: 59_000 });
    let granted = false;
    const second = governor.acquire({ requests: 1, tokens: 2_000 }).then((g) => {
      granted = true;
      return g;
    });
    await vi.waitFor(() => expect(clock.pendingSleeps).toBe(1)); // reserved; sleeping until its send time
    await clock.advance(999);
    expect(granted).toBe(false); // 1,000 tokens given back, 1,000 more refill in 1 s
    await clock.advance(2);
    expect((await second).kind).toBe("shared");
  });

  it("a 429 that names no wait pauses every caller for the default second", async () => {
    const clock = new ManualClock(0);
    const key = `g:${keys++}`;
    const governor = sharedGovernor(clock, key);
    const grant = await governor.acquire({ requests: 1, tokens: 100 });
    await governor.fail(grant, { rateLimited: true });
    expect((await take(key, 100, 0, "p2")).waitMs).toBeCloseTo(1_000, 0);
  });

  it("a caller aborted while waiting for its send time gives its reservation back", async () => {
    const clock = new ManualClock(0);
    const key = `g:${keys++}`;
    const governor = sharedGovernor(clock, key);
    await governor.settle(await governor.acquire({ requests: 1, tokens: 60_000 }), { usedTokens: 60_000 });
    const abort = new AbortController();
    const waiting = governor.acquire({ requests: 1, tokens: 30_000 }, abort.signal);
    await vi.waitFor(() => expect(clock.pendingSleeps).toBe(1)); // reserved; waiting 30 s for the refill
    abort.abort();
    await expect(waiting).rejects.toMatchObject({ code: "aborted" });
    // Its 30,000 tokens are back: the next 30,000 wait 30 s, not 60 s.
    expect((await take(key, 30_000, 0, "p2")).waitMs).toBeCloseTo(30_000, 0);
  });

  it("a grant already waiting for its send time also waits out the longest 429 pause heard meanwhile", async () => {
    const clock = new ManualClock(0);
    const governor = sharedGovernor(clock);
    const [first, second] = [await governor.acquire({ requests: 1, tokens: 100 }), await governor.acquire({ requests: 1, tokens: 100 })];
    await governor.settle(await governor.acquire({ requests: 1, tokens: 59_800 }), { usedTokens: 59_800 });
    let granted = false;
    const waiting = governor.acquire({ requests: 1, tokens: 1_000 }).then((g) => {
      granted = true;
      return g;
    });
    await vi.waitFor(() => expect(clock.pendingSleeps).toBe(1)); // reserved, sending in 1 s
    await governor.fail(first, { rateLimited: true, retryAfterMs: 7_000 });
    await governor.fail(second, { rateLimited: true, retryAfterMs: 2_000 });
    await clock.advance(6_999);
    expect(granted).toBe(false);
    await clock.advance(2);
    expect((await waiting).kind).toBe("shared");
  });

  it("follows the answer's x-ratelimit headers for every process", async () => {
    const clock = new ManualClock(0);
    const key = `g:${keys++}`;
    const governor = sharedGovernor(clock, key);
    const grant = await governor.acquire({ requests: 1, tokens: 1_000 });
    const rateLimit = { limitRequests: 600, limitTokens: 6_000, remainingRequests: 599, remainingTokens: 0, resetRequestsMs: 100, resetTokensMs: 60_000 };
    await governor.settle(grant, { usedTokens: 1_000, rateLimit });
    // Nothing left, refilling at the key's 6,000 a minute (100 a second), not the ceiling's 60,000.
    expect((await take(key, 1_000, 0, "p2")).waitMs).toBeCloseTo(10_000, 0);
  });
});
