import { describe, expect, it } from "vitest";
import { IdleSlots } from "../../src/worker/idleSlots.ts";

describe("IdleSlots", () => {
  it("a notification wakes exactly one waiting slot, the one that waited longest", async () => {
    const slots = new IdleSlots();
    const woken: number[] = [];
    const waits = [0, 1, 2, 3].map((i) => slots.wait(60_000).then(() => woken.push(i)));
    expect(slots.wakeOne()).toBe(true);
    await Promise.resolve();
    await Promise.resolve();
    expect(woken).toEqual([0]);
    expect(slots.size).toBe(3);
    slots.wakeAll();
    await Promise.all(waits);
    expect(woken).toEqual([0, 1, 2, 3]);
    expect(slots.wakeOne()).toBe(false);
  });
});
