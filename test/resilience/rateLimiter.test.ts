/**
 * The OpenAI budgets on a manual clock: pacing by RPM and TPM, FIFO order, following the
 * server's x-ratelimit-* headers, pausing everybody on a 429. No real sleeps.
 */
import { describe, expect, it } from "vitest";
import type { EmbedResult, EmbeddingsClient, RateLimitInfo } from "../../src/clients/openai.ts";
import { PermanentError, PipelineError, TransientError } from "../../src/errors.ts";
import { createBreakers } from "../../src/resilience/breakers.ts";
import { ManualClock } from "../../src/resilience/clock.ts";
import { OpenAIRateLimiter, RateLimitedEmbedder, TokenBucket } from "../../src/resilience/rateLimiter.ts";

/** Track which of a set of promises have settled, without awaiting them. */
function track<T>(promise: Promise<T>) {
  const state = { settled: false, value: undefined as T | undefined, error: undefined as unknown };
  promise.then(
    (v) => {
      state.settled = true;
      state.value = v;
    },
    (e: unknown) => {
      state.settled = true;
      state.error = e;
    },
  );
  return state;
}

const info = (over: Partial<RateLimitInfo>): RateLimitInfo => ({
  limitRequests: undefined,
  limitTokens: undefined,
  remainingRequests: undefined,
  remainingTokens: undefined,
  resetRequestsMs: undefined,
  resetTokensMs: undefined,
  ...over,
});

describe("TokenBucket", () => {
  it("starts full, refills at capacity per minute, never above capacity", async () => {
    const clock = new ManualClock(1_700_000_000_000);
    const bucket = new TokenBucket(600, clock); // 10 per second
    bucket.take(600);
    expect(bucket.level()).toBe(0);
    await clock.advance(1000);
    expect(bucket.level()).toBeCloseTo(10, 9);
    expect(bucket.msUntil(30)).toBeCloseTo(2000, 6);
    await clock.advance(3_600_000);
    expect(bucket.level()).toBe(600);
  });

  it("clamp only lowers; give never exceeds capacity", () => {
    const bucket = new TokenBucket(100, new ManualClock());
    bucket.clamp(500);
    expect(bucket.level()).toBe(100);
    bucket.clamp(40);
    expect(bucket.level()).toBe(40);
    bucket.give(1000);
    expect(bucket.level()).toBe(100);
  });
});

describe("OpenAIRateLimiter pacing", () => {
  it("lets a minute's worth of requests through at once, then paces at RPM/60 per second", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 60, tokensPerMinute: 1e9, clock });
    const grants = Array.from({ length: 62 }, () => track(limiter.acquire(1)));
    await clock.advance(0);
    expect(grants.filter((g) => g.settled)).toHaveLength(60);
    await clock.advance(999);
    expect(grants[60]!.settled).toBe(false);
    await clock.advance(1);
    expect(grants[60]!.settled).toBe(true);
    expect(grants[61]!.settled).toBe(false);
    await clock.advance(1000);
    expect(grants[61]!.settled).toBe(true);
  });

  it("reserves the request's tokens before it is sent and paces by TPM", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 6000, clock }); // 100 tokens/s
    await limiter.acquire(5800);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(200, 6);
    const next = track(limiter.acquire(700)); // needs 500 more: 5 s
    await clock.advance(4999);
    expect(next.settled).toBe(false);
    await clock.advance(1);
    expect(next.settled).toBe(true);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(0, 6);
  });

  it("serves callers in order: a small request does not overtake a large one", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 6000, clock });
    await limiter.acquire(6000);
    const order: string[] = [];
    const big = limiter.acquire(3000).then(() => order.push("big"));
    const small = limiter.acquire(10).then(() => order.push("small"));
    await clock.advance(30_000);
    await clock.advance(100);
    await Promise.all([big, small]);
    expect(order).toEqual(["big", "small"]);
  });

  it("admits a request larger than the whole budget once the bucket is full, and makes the next ones pay", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 1000, clock });
    await limiter.acquire(1500); // full bucket: admitted, level goes to -500
    const next = track(limiter.acquire(100)); // needs 600 tokens of refill: 36 s
    await clock.advance(35_999);
    expect(next.settled).toBe(false);
    await clock.advance(1);
    expect(next.settled).toBe(true);
  });

  it("settle corrects the estimate with the answer's usage", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 10_000, clock });
    const r = await limiter.acquire(1000);
    limiter.settle(r, 800);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(9200, 6);
    const r2 = await limiter.acquire(1000);
    limiter.settle(r2, 1300);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(7900, 6);
    expect(limiter.snapshot().inFlight).toBe(0);
  });

  it("an aborted waiter rejects with a transient `aborted` and does not let the next one jump the queue", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1, tokensPerMinute: 1e9, clock });
    await limiter.acquire(1);
    const ac = new AbortController();
    const second = track(limiter.acquire(1, ac.signal));
    const third = track(limiter.acquire(1));
    await clock.advance(10_000);
    ac.abort();
    await clock.advance(0);
    expect(second.error).toBeInstanceOf(PipelineError);
    expect(second.error).toMatchObject({ code: "aborted", errorClass: "transient" });
    expect(third.settled).toBe(false);
    await clock.advance(50_000);
    expect(third.settled).toBe(true);
  });
});

describe("OpenAIRateLimiter follows the server", () => {
  it("clamps to x-ratelimit-remaining-tokens and waits as the server's budget comes back", async () => {
    const clock = new ManualClock();
    // Locally we think 60k tokens/min are ours; another process has spent most of the key's budget.
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 60_000, clock });
    const r = await limiter.acquire(100);
    // Server: 100 left of 60k, back to full in 59.9 s (1000 tokens/s).
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 100, resetTokensMs: 59_900 }), r);
    limiter.settle(r, 100);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(100, 6);
    const next = track(limiter.acquire(1000)); // needs 900 more: 0.9 s
    await clock.advance(898);
    expect(next.settled).toBe(false);
    await clock.advance(3);
    expect(next.settled).toBe(true);
  });

  it("counts requests sent after the observed one, which the server may not have seen yet", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 60_000, clock });
    const first = await limiter.acquire(1000);
    const second = await limiter.acquire(2000); // in flight when the first one's answer arrives
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 5000, resetTokensMs: 55_000 }), first);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(3000, 6);
    limiter.settle(first, 1000);
    limiter.settle(second, 2000);
  });

  it("what was sent after the observed answer stays spent locally, even when the server says it refills fast", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 60_000, clock });
    const first = await limiter.acquire(1000);
    await limiter.acquire(2000); // in flight when the first one's answer arrives
    // Server: 5,000 left after `first`, full again in 1 s. Locally 3,000 (5,000 less the 2,000
    // it has not seen) refill at 1,000 tokens/s: 10,000 tokens take 7 s.
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 5000, resetTokensMs: 1000 }), first);
    const next = track(limiter.acquire(10_000));
    await clock.advance(6_999);
    expect(next.settled).toBe(false);
    await clock.advance(2);
    expect(next.settled).toBe(true);
  });

  it("counts what it sends after an answer against the server's projection until a later answer counts it", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 60_000, clock });
    const r = await limiter.acquire(10);
    // The server has nothing left and refills slowly: 100 tokens/s, where ours would give 1,000/s.
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 0, resetTokensMs: 600_000 }), r);
    limiter.settle(r, 10);
    await clock.advance(10_000);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(1000, 6);
    await limiter.acquire(1000);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(0, 6);
  });

  it("a request released as never sent is no longer counted against the server's projection", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 60_000, clock });
    const first = await limiter.acquire(10);
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 5000, resetTokensMs: 60_000 }), first);
    limiter.settle(first, 10);
    const unsent = await limiter.acquire(1000);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(4000, 6);
    limiter.release(unsent, { notSent: true });
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(5000, 6);
  });

  it("waits as slowly as the server's reset says its budget comes back, when that is slower than the local refill", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 60_000, clock });
    const r = await limiter.acquire(10);
    // Nothing left, full again in 10 min: 100 tokens/s, where the local bucket refills 1,000/s.
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 0, resetTokensMs: 600_000 }), r);
    limiter.settle(r, 10);
    const next = track(limiter.acquire(1000));
    await clock.advance(9_999);
    expect(next.settled).toBe(false);
    await clock.advance(2);
    expect(next.settled).toBe(true);
  });

  it("a request that cannot fit in the server's projection beside what is in flight waits for the projection to expire", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 60_000, clock });
    const first = await limiter.acquire(1000);
    await limiter.acquire(50_000); // in flight, unseen by the server
    // The server is back at its 60,000 limit in 1 s, but 50,000 + 20,000 never fit under it: only a
    // later answer (or the projection's expiry after a minute) can say the 50,000 were counted.
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 59_000, resetTokensMs: 1000 }), first);
    const next = track(limiter.acquire(20_000));
    await clock.advance(59_999);
    expect(next.settled).toBe(false);
    await clock.advance(2);
    expect(next.settled).toBe(true);
  });

  it("a higher x-ratelimit-limit than configured does not raise the deployment's ceiling", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 600, tokensPerMinute: 60_000, clock });
    const r = await limiter.acquire(10);
    limiter.observe(info({ limitRequests: 6_000, limitTokens: 600_000 }), r);
    limiter.settle(r, 10);
    await clock.advance(120_000);
    expect(limiter.snapshot()).toMatchObject({ requestsAvailable: 600, tokensAvailable: 60_000 });
  });

  it("ignores a stale answer that arrives after a newer one", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 60_000, clock });
    const older = await limiter.acquire(10);
    const newer = await limiter.acquire(10);
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 50_000, resetTokensMs: 10_000 }), newer);
    limiter.observe(info({ limitTokens: 60_000, remainingTokens: 0, resetTokensMs: 60_000 }), older);
    expect(limiter.snapshot().tokensAvailable).toBeCloseTo(50_000, 6);
  });

  it("adopts a lower x-ratelimit-limit-requests than configured", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 600, tokensPerMinute: 1e9, clock });
    const r = await limiter.acquire(1);
    limiter.observe(info({ limitRequests: 60, remainingRequests: 59, resetRequestsMs: 1000 }), r);
    limiter.settle(r);
    expect(limiter.snapshot().requestsAvailable).toBeCloseTo(59, 6);
    for (let i = 0; i < 59; i++) await limiter.acquire(1);
    const next = track(limiter.acquire(1));
    await clock.advance(999); // now 1 request/s, not 10/s
    expect(next.settled).toBe(false);
    await clock.advance(2);
    expect(next.settled).toBe(true);
  });

  it("a lower x-ratelimit-limit caps what may go at once, even in an answer that reports nothing remaining", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 600, tokensPerMinute: 60_000, clock });
    const r = await limiter.acquire(10);
    limiter.observe(info({ limitRequests: 60, limitTokens: 6_000 }), r);
    limiter.settle(r, 10);
    expect(limiter.snapshot()).toMatchObject({ requestsAvailable: 60, tokensAvailable: 6_000 });
  });

  it("follows x-ratelimit-remaining-requests: 0 until the reset", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 3000, tokensPerMinute: 1e9, clock });
    const r = await limiter.acquire(1);
    limiter.observe(info({ limitRequests: 3000, remainingRequests: 0, resetRequestsMs: 20 }), r);
    limiter.settle(r);
    const next = track(limiter.acquire(1));
    await clock.advance(19);
    expect(next.settled).toBe(false);
    await clock.advance(2);
    expect(next.settled).toBe(true);
  });

  it("a 429 pause stops every caller until retryAfterMs has passed", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 1e9, clock });
    limiter.pause(2812);
    expect(limiter.snapshot().pausedForMs).toBe(2812);
    const a = track(limiter.acquire(1));
    const b = track(limiter.acquire(1));
    await clock.advance(2811);
    expect([a.settled, b.settled]).toEqual([false, false]);
    await clock.advance(1);
    expect([a.settled, b.settled]).toEqual([true, true]);
  });

  it("a shorter 429 pause heard later does not cut a longer one short", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 1e9, clock });
    limiter.pause(5000);
    limiter.pause(1000);
    expect(limiter.snapshot().pausedForMs).toBe(5000);
  });
});

describe("RateLimitedEmbedder", () => {
  const ok = (n: number, rateLimit?: RateLimitInfo): EmbedResult => ({
    vectors: Array.from({ length: n }, () => new Float32Array([1, 0])),
    usage: { promptTokens: 5 * n, totalTokens: 5 * n },
    rateLimit,
    model: "text-embedding-3-small",
  });

  function fakeClient(answers: Array<() => EmbedResult>): EmbeddingsClient & { calls: number } {
    const client = {
      model: "text-embedding-3-small",
      dimensions: undefined,
      calls: 0,
      async embed(_inputs: string[]) {
        const answer = answers[client.calls++];
        if (!answer) throw new Error("no more answers");
        return answer();
      },
    };
    return client;
  }

  const rateLimited = () => {
    throw new TransientError("openai_rate_limited", "429 Rate limit reached", { status: 429, retryAfterMs: 2000 });
  };

  it("spends the batch's token count, then follows the answer's headers and usage", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 100, tokensPerMinute: 10_000, clock });
    const client = fakeClient([() => ok(2, info({ limitTokens: 10_000, remainingTokens: 4000, resetTokensMs: 36_000 }))]);
    const embedder = new RateLimitedEmbedder({ client, limiter, countTokens: () => 10 });
    const result = await embedder.embed(["a", "b"]);
    expect(result.vectors).toHaveLength(2);
    // Server said 4000 left; usage (10) equals the estimate (10).
    expect(limiter.snapshot()).toMatchObject({ inFlight: 0, tokensAvailable: 4000 });
  });

  it("counts tokens with cl100k_base by default", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 100, tokensPerMinute: 10_000, clock });
    let spentBefore = 0;
    const client: EmbeddingsClient = {
      model: "m",
      dimensions: undefined,
      async embed() {
        spentBefore = 10_000 - limiter.snapshot().tokensAvailable;
        return { ...ok(1), usage: { promptTokens: 2, totalTokens: 2 } };
      },
    };
    await new RateLimitedEmbedder({ client, limiter }).embed(["hello world"]);
    expect(spentBefore).toBeCloseTo(2, 6);
  });

  it("on a 429 pauses every caller for retryAfterMs and throws it to the worker (no retry by default)", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 100, tokensPerMinute: 10_000, clock });
    const embedder = new RateLimitedEmbedder({ client: fakeClient([rateLimited]), limiter, countTokens: () => 1 });
    await expect(embedder.embed(["a"])).rejects.toMatchObject({ code: "openai_rate_limited", retryAfterMs: 2000 });
    expect(limiter.snapshot()).toMatchObject({ pausedForMs: 2000, inFlight: 0 });
  });

  it("a 429 that refuses the account (insufficient_quota, permanent) pauses nobody", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 100, tokensPerMinute: 10_000, clock });
    const noQuota = () => {
      throw new PermanentError("openai_insufficient_quota", "429 You exceeded your current quota", { status: 429 });
    };
    const embedder = new RateLimitedEmbedder({ client: fakeClient([noQuota]), limiter, countTokens: () => 1 });
    await expect(embedder.embed(["a"])).rejects.toMatchObject({ code: "openai_insufficient_quota" });
    expect(limiter.snapshot()).toMatchObject({ pausedForMs: 0, inFlight: 0 });
  });

  it("with rateLimitRetries, waits out the pause and tries again", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 100, tokensPerMinute: 10_000, clock });
    const client = fakeClient([rateLimited, () => ok(1)]);
    const embedder = new RateLimitedEmbedder({ client, limiter, countTokens: () => 1, rateLimitRetries: 1 });
    const result = track(embedder.embed(["a"]));
    await clock.advance(1999);
    expect(result.settled).toBe(false);
    expect(client.calls).toBe(1);
    await clock.advance(1);
    expect(result.settled).toBe(true);
    expect(result.error).toBeUndefined();
    expect(client.calls).toBe(2);
  });

  it("429s and permanent errors do not open the OpenAI breaker; server errors do", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 1e6, tokensPerMinute: 1e9, clock });
    const breakers = createBreakers({ openai: { policy: { kind: "consecutive", failures: 2 } } });
    const serverError = () => {
      throw new TransientError("openai_unavailable", "500", { status: 500 });
    };
    const badInput = () => {
      throw new PermanentError("openai_bad_request", "400", { status: 400 });
    };
    const client = fakeClient([rateLimited, rateLimited, rateLimited, badInput, badInput, serverError, serverError]);
    const embedder = new RateLimitedEmbedder({ client, limiter, breaker: breakers.openai, countTokens: () => 1 });
    for (let i = 0; i < 5; i++) {
      const attempt = track(embedder.embed(["a"]));
      await clock.advance(2000); // wait out any 429 pause
      expect(attempt.error).toBeInstanceOf(PipelineError);
    }
    expect(breakers.openai.state).toBe("closed");
    for (let i = 0; i < 2; i++) await expect(embedder.embed(["a"])).rejects.toMatchObject({ code: "openai_unavailable" });
    expect(breakers.openai.state).toBe("open");
    await expect(embedder.embed(["a"])).rejects.toMatchObject({ code: "circuit_open", errorClass: "transient" });
    expect(client.calls).toBe(7);
  });

  it("gives the budget back when an open circuit rejected the call before it was sent", async () => {
    const clock = new ManualClock();
    const limiter = new OpenAIRateLimiter({ requestsPerMinute: 10, tokensPerMinute: 1000, clock });
    const breakers = createBreakers();
    const held = breakers.openai.isolate();
    const embedder = new RateLimitedEmbedder({ client: fakeClient([]), limiter, breaker: breakers.openai, countTokens: () => 400 });
    for (let i = 0; i < 5; i++) await expect(embedder.embed(["a"])).rejects.toMatchObject({ code: "circuit_open" });
    expect(limiter.snapshot()).toMatchObject({ requestsAvailable: 10, tokensAvailable: 1000, inFlight: 0 });
    held.dispose();
  });
});
