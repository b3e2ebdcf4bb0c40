/**
 * Per-service circuit breakers: open after repeated service failures, fail fast while open,
 * probe once half-open, close on success or reopen on failure. Time is moved with a fake
 * `Date` (cockatiel reads `Date.now()`), never slept.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { PermanentError, ServiceConditionError, TransientError } from "../../src/errors.ts";
import {
  BREAKER_STATE_VALUE,
  ServiceBreaker,
  breakerStates,
  countsAsServiceFailure,
  createBreakers,
  withTimeout,
  type BreakerState,
} from "../../src/resilience/breakers.ts";
import { rejectionOf } from "../support/errors.ts";

const serverError = () => new TransientError("openai_unavailable", "503 upstream", { status: 503 });

function advance(ms: number) {
  vi.setSystemTime(Date.now() + ms);
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["Date"] });
  vi.setSystemTime(new Date("2025-01-01T00:00:00Z"));
});
afterEach(() => {
  vi.useRealTimers();
});

describe("consecutive breaker", () => {
  const breaker = () => new ServiceBreaker("openai", { policy: { kind: "consecutive", failures: 3 }, halfOpenAfterMs: 10_000, refusalProbeMs: 30_000 });

  it("opens after N consecutive service failures and then fails fast without calling the service", async () => {
    const b = breaker();
    const states: BreakerState[] = [];
    b.onStateChange((s) => states.push(s));
    const fn = vi.fn(async () => {
      throw serverError();
    });
    for (let i = 0; i < 3; i++) expect((await rejectionOf(b.execute(fn))).code).toBe("openai_unavailable");
    expect(b.state).toBe("open");
    expect(states).toEqual(["open"]);

    advance(4000);
    const fast = await rejectionOf(b.execute(fn));
    expect(fast).toMatchObject({ code: "circuit_open", errorClass: "transient", retryAfterMs: 6000 });
    expect(fn).toHaveBeenCalledTimes(3);
    expect(b.lastFailure?.code).toBe("openai_unavailable");
  });

  it("a success in between resets the count", async () => {
    const b = breaker();
    const fail = async () => {
      throw serverError();
    };
    await rejectionOf(b.execute(fail));
    await rejectionOf(b.execute(fail));
    await b.execute(async () => "ok");
    await rejectionOf(b.execute(fail));
    await rejectionOf(b.execute(fail));
    expect(b.state).toBe("closed");
  });

  it("half-open: one probe after halfOpenAfterMs; success closes the circuit", async () => {
    const b = breaker();
    const states: BreakerState[] = [];
    b.onStateChange((s) => states.push(s));
    for (let i = 0; i < 3; i++) await rejectionOf(b.execute(async () => Promise.reject(serverError())));
    advance(10_000);
    let release!: (v: string) => void;
    const probe = b.execute(() => new Promise<string>((r) => (release = r)));
    await Promise.resolve();
    expect(b.state).toBe("half_open");
    release("back");
    await expect(probe).resolves.toBe("back");
    expect(b.state).toBe("closed");
    expect(states).toEqual(["open", "half_open", "closed"]);
    await expect(b.execute(async () => 42)).resolves.toBe(42);
  });

  it("half-open: a failed probe reopens the circuit for another period", async () => {
    const b = breaker();
    for (let i = 0; i < 3; i++) await rejectionOf(b.execute(async () => Promise.reject(serverError())));
    advance(10_000);
    expect((await rejectionOf(b.execute(async () => Promise.reject(serverError())))).code).toBe("openai_unavailable");
    expect(b.state).toBe("open");
    advance(9_999);
    expect((await rejectionOf(b.execute(async () => "never"))).code).toBe("circuit_open");
    advance(1);
    await expect(b.execute(async () => "probe ok")).resolves.toBe("probe ok");
    expect(b.state).toBe("closed");
  });

  it("permanent errors, 429s and the caller's abort do not count", async () => {
    const b = breaker();
    const errors = [
      new PermanentError("openai_bad_request", "400", { status: 400 }),
      new TransientError("openai_rate_limited", "429", { status: 429, retryAfterMs: 100 }),
      new TransientError("storage_rate_limited", "429", { status: 429 }),
      new TransientError("aborted", "shutdown"),
    ];
    for (let round = 0; round < 2; round++) {
      for (const e of errors) await rejectionOf(b.execute(async () => Promise.reject(e)));
    }
    expect(b.state).toBe("closed");
    expect(countsAsServiceFailure(new TransientError("timeout", "slow"))).toBe(true);
    expect(countsAsServiceFailure(Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }))).toBe(true);
  });

  it("a service outage is not the document's fault: failures once the circuit is open, 429s and circuit_open are service conditions", async () => {
    const b = breaker();
    const fail = async () => {
      throw serverError();
    };
    // Closed: the first 503 after a success is the call's own transient failure (an attempt).
    expect(await rejectionOf(b.execute(fail))).not.toBeInstanceOf(ServiceConditionError);
    // A second in a row is an outage though the circuit is still closed: other processes may
    // have seen the rest of it. Parked at the worker's base delay, no attempt spent.
    expect(await rejectionOf(b.execute(fail))).toMatchObject({ condition: "outage", code: "openai_unavailable", retryAfterMs: undefined });
    // The third opens the circuit: from here on the service is to blame.
    const tripping = await rejectionOf(b.execute(fail));
    expect(tripping).toBeInstanceOf(ServiceConditionError);
    expect(tripping).toMatchObject({ condition: "outage", service: "openai", code: "openai_unavailable", status: 503, retryAfterMs: 10_000 });
    advance(3000);
    expect(await rejectionOf(b.execute(fail))).toMatchObject({ condition: "circuit_open", code: "circuit_open", retryAfterMs: 7000 });
    // The half-open probe fails: still an outage, parked until the next probe.
    advance(7000);
    expect(await rejectionOf(b.execute(fail))).toMatchObject({ condition: "outage", retryAfterMs: 10_000 });
    // A success in between: the next failure is the call's own again.
    const flaky = breaker();
    expect(await rejectionOf(flaky.execute(fail))).not.toBeInstanceOf(ServiceConditionError);
    await flaky.execute(async () => "ok");
    expect(await rejectionOf(flaky.execute(fail))).not.toBeInstanceOf(ServiceConditionError);
    // A 429 is the service being busy, whatever the circuit says.
    const busy = breaker();
    const limited = await rejectionOf(
      busy.execute(async () => Promise.reject(new TransientError("openai_rate_limited", "429", { status: 429, retryAfterMs: 1500 }))),
    );
    expect(limited).toMatchObject({ condition: "rate_limited", code: "openai_rate_limited", status: 429, retryAfterMs: 1500 });
    // A bad request stays the document's problem.
    expect(await rejectionOf(busy.execute(async () => Promise.reject(new PermanentError("openai_bad_request", "400", { status: 400 }))))).not.toBeInstanceOf(
      ServiceConditionError,
    );
  });

  it("account-level errors stop the fleet, not the documents: one refusal holds every call back, probes slowly, and lifts when the credential works", async () => {
    const b = breaker();
    const changes: Array<string | undefined> = [];
    b.onRefusalChange((refusal) => changes.push(refusal?.code));
    let quota = true;
    const fn = vi.fn(async () => {
      if (quota) throw new PermanentError("openai_insufficient_quota", "You exceeded your current quota (code insufficient_quota)", { status: 429 });
      return "ok";
    });
    const first = await rejectionOf(b.execute(fn));
    expect(first).toBeInstanceOf(ServiceConditionError);
    expect(first).toMatchObject({ condition: "refusing", code: "openai_insufficient_quota", errorClass: "transient", retryAfterMs: 30_000 });
    expect(b.state).toBe("isolated");
    expect(b.refusal).toMatchObject({ code: "openai_insufficient_quota", message: expect.stringContaining("quota") });
    // No probe storm: every call fails fast until the probe interval has passed.
    for (let i = 0; i < 20; i++) expect(await rejectionOf(b.execute(fn))).toMatchObject({ condition: "refusing" });
    expect(fn).toHaveBeenCalledTimes(1);
    advance(10_000);
    expect(await rejectionOf(b.execute(fn))).toMatchObject({ retryAfterMs: 20_000 });
    // One probe per interval; it fails, the next waits another interval.
    advance(20_000);
    await rejectionOf(b.execute(fn));
    expect(fn).toHaveBeenCalledTimes(2);
    expect(await rejectionOf(b.execute(fn))).toMatchObject({ retryAfterMs: 30_000 });
    // Fixed: the next probe succeeds and every call goes through again.
    quota = false;
    advance(30_000);
    await expect(b.execute(fn)).resolves.toBe("ok");
    await expect(b.execute(fn)).resolves.toBe("ok");
    expect(b.state).toBe("closed");
    expect(b.refusal).toBeUndefined();
    expect(changes).toEqual(["openai_insufficient_quota", undefined]);
  });

  it("while the account is refused: one probe at a time, and a probe that fails some other way (a 503) waits another interval", async () => {
    const b = breaker();
    const noQuota = () => Promise.reject(new PermanentError("openai_insufficient_quota", "You exceeded your current quota", { status: 429 }));
    await rejectionOf(b.execute(noQuota));
    advance(30_000);
    let answer!: (err: Error) => void;
    const probe = b.execute(() => new Promise<string>((_resolve, reject) => (answer = reject)));
    const beside = vi.fn(async () => "ok");
    expect(await rejectionOf(b.execute(beside))).toMatchObject({ condition: "refusing" });
    expect(beside).not.toHaveBeenCalled();
    answer(serverError());
    await rejectionOf(probe);
    expect(b.state).toBe("isolated"); // inconclusive: still refused
    expect(await rejectionOf(b.execute(beside))).toMatchObject({ condition: "refusing", retryAfterMs: 30_000 });
    expect(beside).not.toHaveBeenCalled();
    advance(30_000); // the next probe is due, and the account works again
    await expect(b.execute(beside)).resolves.toBe("ok");
    expect(b.refusal).toBeUndefined();
  });

  it("isolate holds the circuit open by hand", async () => {
    const b = breaker();
    const handle = b.isolate();
    expect(b.state).toBe("isolated");
    expect((await rejectionOf(b.execute(async () => 1))).code).toBe("circuit_open");
    handle.dispose();
    await expect(b.execute(async () => 1)).resolves.toBe(1);
  });

  it("passes the caller's abort through as `aborted`", async () => {
    const b = breaker();
    const ac = new AbortController();
    ac.abort();
    expect((await rejectionOf(b.execute(async () => 1, ac.signal))).code).toBe("aborted");
  });

  it("hands fn a signal that follows the caller's", async () => {
    const b = breaker();
    const ac = new AbortController();
    let seen: AbortSignal | undefined;
    await b.execute(async (signal) => {
      seen = signal;
      ac.abort();
    }, ac.signal);
    expect(seen?.aborted).toBe(true);
  });
});

describe("sampling breaker", () => {
  it("opens when the failure rate over the window passes the threshold at enough traffic", async () => {
    const b = new ServiceBreaker("storage", {
      policy: { kind: "sampling", threshold: 0.5, durationMs: 10_000, minimumRps: 1 },
      halfOpenAfterMs: 1000,
      refusalProbeMs: 30_000,
    });
    for (let i = 0; i < 10; i++) {
      await b.execute(async () => "ok");
      advance(100);
    }
    expect(b.state).toBe("closed");
    for (let i = 0; i < 12 && b.state === "closed"; i++) {
      await rejectionOf(b.execute(async () => Promise.reject(new TransientError("storage_unavailable", "500", { status: 500 }))));
      advance(100);
    }
    expect(b.state).toBe("open");
  });
});

describe("createBreakers", () => {
  it("makes one independent breaker per service, with overrides, and reports states for metrics", async () => {
    const breakers = createBreakers({ llamaparse: { policy: { kind: "consecutive", failures: 1 } } });
    await rejectionOf(breakers.llamaparse.execute(async () => Promise.reject(new TransientError("llamaparse_unavailable", "502", { status: 502 }))));
    expect(breakerStates(breakers)).toEqual({ openai: "closed", llamaparse: "open", storage: "closed" });
    expect(BREAKER_STATE_VALUE[breakers.llamaparse.state]).toBe(1);
    expect(breakers.openai.config.halfOpenAfterMs).toBe(10_000);
  });
});

describe("withTimeout", () => {
  beforeEach(() => vi.useRealTimers());

  it("resolves with the result when fn is fast", async () => {
    await expect(withTimeout(1000, async () => "fast")).resolves.toBe("fast");
  });

  it("rejects with a transient `timeout` and aborts fn's signal, even if fn ignores it", async () => {
    let inner: AbortSignal | undefined;
    const err = await rejectionOf(
      withTimeout(5, (signal) => {
        inner = signal;
        return new Promise(() => {});
      }),
    );
    expect(err).toMatchObject({ code: "timeout", errorClass: "transient" });
    expect(inner?.aborted).toBe(true);
  });

  it("rejects with `aborted`, not `timeout`, when the caller aborts", async () => {
    const ac = new AbortController();
    const p = withTimeout(10_000, () => new Promise(() => {}), ac.signal);
    ac.abort();
    expect((await rejectionOf(p)).code).toBe("aborted");
  });

  it("passes fn's own errors through", async () => {
    const e = new PermanentError("x", "boom");
    await expect(withTimeout(1000, async () => Promise.reject(e))).rejects.toBe(e);
  });
});
