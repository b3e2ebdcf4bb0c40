/** The manual clock the rate limiter tests run on, and the real clock's abort handling. */
import { describe, expect, it } from "vitest";
import { ManualClock, systemClock } from "../../src/resilience/clock.ts";

describe("ManualClock", () => {
  it("wakes sleepers in time order as time advances, and only then", async () => {
    const clock = new ManualClock(1000);
    const woke: string[] = [];
    void clock.sleep(300).then(() => woke.push(`b@${clock.now()}`));
    void clock.sleep(100).then(() => woke.push(`a@${clock.now()}`));
    await clock.advance(99);
    expect(woke).toEqual([]);
    expect(clock.nextWakeAt).toBe(1100);
    await clock.advance(150);
    expect(woke).toEqual(["a@1100"]);
    expect(await clock.advanceToNext()).toBe(true);
    expect(woke).toEqual(["a@1100", "b@1300"]);
    expect(await clock.advanceToNext()).toBe(false);
  });

  it("lets a woken sleeper schedule the next sleep within the same advance", async () => {
    const clock = new ManualClock();
    let ticks = 0;
    const loop = (async () => {
      while (ticks < 5) {
        await clock.sleep(10);
        ticks++;
      }
    })();
    await clock.advance(50);
    await loop;
    expect(ticks).toBe(5);
    expect(clock.now()).toBe(50);
  });

  it("rejects a sleep when its signal aborts", async () => {
    const clock = new ManualClock();
    const ac = new AbortController();
    const p = clock.sleep(1000, ac.signal);
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: "aborted", errorClass: "transient" });
    expect(clock.pendingSleeps).toBe(0);
  });
});

describe("systemClock", () => {
  it("sleeps for real (briefly) and rejects on abort with a transient `aborted`", async () => {
    const t0 = Date.now();
    await systemClock.sleep(5);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(4);
    const ac = new AbortController();
    const p = systemClock.sleep(10_000, ac.signal);
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: "aborted", errorClass: "transient" });
  });
});
