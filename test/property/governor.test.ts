/**
 * The shared rate budget (migration 0006, `src/resilience/governorQueries.ts`) on a real database:
 * several processes (one connection each) reserve, settle, fail with a 429, report headers, crash
 * (never settle, so the reservation expires) and settle twice, in interleavings fast-check
 * generates; each step runs the processes' operations concurrently. Time is simulated (`$now`).
 * As in SharedGovernor, an answer (usage or a 429) settles a reservation only once its send time
 * has come; before it, a reservation can only be given back as never sent.
 *
 * Properties:
 * - what is sent never exceeds the budget: for every pair of send times s ≤ e, the tokens (and
 *   requests) charged to reservations sending in [s, e] are at most capacity + rate × (e − s),
 *   where charged = the settled usage, the reservation if never settled, 0 if never sent;
 * - settling is idempotent: a second settle of a reservation changes no level.
 */
import fc from "fast-check";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { reserve, settle } from "../../src/resilience/governorQueries.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { checkProperty, timeoutFor } from "./settings.ts";

const FILE = "test/property/governor.test.ts";
const DEFAULT_RUNS = 25;
const CEILING = { rpm: 60, tpm: 6000 }; // 1 request and 100 tokens per second
const TTL_MS = 5_000;
const PROCESSES = 3;

let db: TestDatabase;
/** One pool (one connection) per simulated process. */
let clients: pg.Pool[] = [];
beforeAll(async () => {
  db = await createTestDatabase();
  clients = Array.from({ length: PROCESSES }, () => new pg.Pool({ connectionString: db.url, max: 1 }));
}, 60_000);
afterAll(async () => {
  await Promise.all(clients.map((c) => c.end()));
  await db?.drop();
});

type Op =
  | { kind: "reserve"; tokens: number }
  | { kind: "settle"; pick: number; usedFraction: number; remaining: number | null }
  | { kind: "fail429"; pick: number; pauseMs: number }
  | { kind: "notSent"; pick: number }
  | { kind: "resettle"; pick: number }
  | { kind: "crash"; pick: number }
  | { kind: "idle" };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("reserve" as const), tokens: fc.integer({ min: 0, max: 4000 }) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant("settle" as const),
      pick: fc.nat(),
      usedFraction: fc.double({ min: 0, max: 1, noNaN: true }),
      remaining: fc.option(fc.integer({ min: 0, max: 6000 }), { nil: null }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("fail429" as const), pick: fc.nat(), pauseMs: fc.integer({ min: 0, max: 3000 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("notSent" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("resettle" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("crash" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.constant({ kind: "idle" as const }) },
);

/** One step: every process does one operation at the same simulated instant, then time moves. */
const stepArb = fc.record({ ops: fc.array(opArb, { minLength: PROCESSES, maxLength: PROCESSES }), advanceMs: fc.integer({ min: 0, max: 4000 }) });

interface Sent {
  id: string;
  sendAt: number;
  tokens: number;
  /** What the server was charged: usage when settled, 0 when never sent, else the reservation. */
  charged: number;
  requests: number;
  /** Not settled, failed or crashed yet: its process may still act on it. */
  open: boolean;
  settled: boolean;
}

async function levels(key: string) {
  const { rows } = await db.pool.query(
    "SELECT requests_level, tokens_level, paused_until, refilled_at FROM upload_pipeline.rate_budgets WHERE budget_key = $1",
    [key],
  );
  return rows[0];
}

/** Largest overshoot of charged over capacity + rate × span, over every window between two sends. */
function worstOvershoot(sent: Sent[], pick: (s: Sent) => number, perMinute: number): number {
  const sorted = [...sent].sort((a, b) => a.sendAt - b.sendAt);
  let worst = -Infinity;
  for (let i = 0; i < sorted.length; i++) {
    let sum = 0;
    for (let j = i; j < sorted.length; j++) {
      sum += pick(sorted[j]!);
      const allowed = perMinute + (perMinute * (sorted[j]!.sendAt - sorted[i]!.sendAt)) / 60_000;
      worst = Math.max(worst, sum - allowed);
    }
  }
  return worst;
}

describe("shared rate budget", () => {
  it(
    "sends never exceed the budget, and a second settle changes nothing, in any interleaving of several processes",
    async () => {
      let run = 0;
      await checkProperty(
        fc.asyncProperty(fc.array(stepArb, { minLength: 4, maxLength: 14 }), async (steps) => {
          const key = `prop:${run++}`;
          let now = Date.UTC(2026, 0, 1);
          const sent: Sent[] = [];
          const byProcess: Sent[][] = Array.from({ length: PROCESSES }, () => []);
          const common = { ceiling: CEILING };

          for (const step of steps) {
            const at = new Date(now);
            await Promise.all(
              step.ops.map(async (op, p) => {
                const c = clients[p]!;
                const mine = byProcess[p]!.filter((s) => s.open);
                const target = "pick" in op && mine.length ? mine[op.pick % mine.length]! : undefined;
                if (op.kind === "reserve") {
                  const r = await reserve(c, { budgetKey: key, holder: `p${p}`, requests: 1, tokens: op.tokens, ttlMs: TTL_MS, now: at, ...common });
                  const s: Sent = {
                    id: r.reservationId,
                    sendAt: now + r.waitMs,
                    tokens: op.tokens,
                    charged: op.tokens,
                    requests: 1,
                    open: true,
                    settled: false,
                  };
                  sent.push(s);
                  byProcess[p]!.push(s);
                } else if (op.kind === "settle" && target && target.sendAt <= now) {
                  // An answer (usage or a 429) settles a reservation only after its send time, as
                  // SharedGovernor does; before it, only "notSent" can.
                  const used = Math.floor(target.tokens * op.usedFraction);
                  const r = await settle(c, { reservationId: target.id, tokens: used, remainingTokens: op.remaining ?? undefined, now: at, ...common });
                  target.open = false;
                  // Only an expired reservation (pruned by another's settle) can be missing: it stays charged.
                  if (!r.settled) expect(now).toBeGreaterThanOrEqual(target.sendAt + TTL_MS);
                  if (!r.settled) return;
                  target.charged = used;
                  target.settled = true;
                } else if (op.kind === "fail429" && target && target.sendAt <= now) {
                  await settle(c, { reservationId: target.id, pauseMs: op.pauseMs, now: at, ...common });
                  target.open = false; // a refused request stays charged: we cannot tell whether it counted
                  target.settled = true;
                } else if (op.kind === "notSent" && target && target.sendAt > now) {
                  // Aborted while waiting for its send time: it never left.
                  await settle(c, { reservationId: target.id, notSent: true, now: at, ...common });
                  target.charged = 0;
                  target.requests = 0;
                  target.open = false;
                  target.settled = true;
                } else if (op.kind === "crash" && target) {
                  target.open = false; // never settled: stays charged, expires
                }
              }),
            );
            // Idempotence: settling again, from another process, changes no level.
            for (const [p, op] of step.ops.entries()) {
              if (op.kind !== "resettle") continue;
              const done = sent.filter((s) => s.settled);
              if (!done.length) continue;
              const target = done[op.pick % done.length]!;
              const before = await levels(key);
              const r = await settle(clients[(p + 1) % PROCESSES]!, { reservationId: target.id, tokens: 0, notSent: true, pauseMs: 9999, now: at, ...common });
              expect(r.settled).toBe(false);
              expect(await levels(key)).toEqual(before);
            }
            now += step.advanceMs;
          }
          expect(worstOvershoot(sent, (s) => s.charged, CEILING.tpm)).toBeLessThanOrEqual(1e-6 * CEILING.tpm);
          expect(worstOvershoot(sent, (s) => s.requests, CEILING.rpm)).toBeLessThanOrEqual(1e-6 * CEILING.rpm);
        }),
        {
          name: "sends never exceed the budget, and a second settle changes nothing, in any interleaving of several processes",
          file: FILE,
          defaultRuns: DEFAULT_RUNS,
        },
      );
    },
    timeoutFor(DEFAULT_RUNS, 1500),
  );
});
