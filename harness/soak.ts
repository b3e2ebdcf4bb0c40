/**
 * The soak: random scenarios drawn from a seed stream (kills of the worker holding a random
 * document's job at a random fault point, 429 storms, outage phases, resets, webhook chaos, PostgreSQL
 * restarts), each run to quiescence and checked; the first violation stops it with the round's
 * seed and the command that replays it. Round i's scenario is a pure function of (seed, i).
 */
import { FAULT_POINTS } from "../src/worker/faultPoints.ts";
import { hash32, mulberry32, type Rng } from "../mocks/shared/rng.ts";
import { parseScenario, type Scenario } from "./scenario.ts";

/**
 * Points every job passes in a worker process: a kill there always happens. Parse intake's points
 * are left out (the webhook handler runs them in the API process, the reconciler only when a
 * webhook is late), the submit retry's lookup, and the Batch API lane's points (only bulk jobs
 * pass them; soak rounds upload interactive documents).
 */
export const KILL_POINTS = FAULT_POINTS.filter(
  (p) => !/reconcile_parse|llamaparse\.get|llamaparse\.find|commit\.parsed\.|storage\.upload|openai\.files|openai\.batches|batch_ingested/.test(p),
);

/** The seed of round `round` of a soak seeded with `seed`. */
export function roundSeed(seed: number, round: number): number {
  return hash32(`soak\u0000${seed}\u0000${round}`);
}

const pick = <T>(rng: Rng, items: readonly T[]): T => items[Math.floor(rng() * items.length)]!;
const chance = (rng: Rng, p: number) => rng() < p;

/** Round `round`'s scenario: everything drawn from its seed, validated like any scenario file. */
export function drawScenario(seed: number, round: number, options: { postgresRestarts: boolean }): Scenario {
  const s = roundSeed(seed, round);
  const rng = mulberry32(s);
  const documents = 3 + Math.floor(rng() * 4);
  const faults: Record<string, unknown> = {};
  const openai: Record<string, unknown> = {};
  if (chance(rng, 0.6)) openai.errors = [{ fault: pick(rng, [500, 502, 503, "reset"] as const), rate: Math.round(rng() * 25) / 100 }];
  if (chance(rng, 0.4)) openai.bursts = [{ fault: 429, start: 1, count: 1 + Math.floor(rng() * 3), rate: Math.round(rng() * 50) / 100 }];
  // An outage from when the first job can be embedded (a phase, so it hits the embedder however fast the machine), for 1–6 s.
  let phases: Record<string, unknown> = {};
  if (chance(rng, 0.3)) {
    openai.outages = [{ fault: 503, phase: "openai-down" }];
    phases = {
      "openai-down": { start: { jobs: { reached: "chunks_stored", atLeast: 1 + Math.floor(rng() * 2) } }, end: { afterMs: 1000 + Math.floor(rng() * 5000) } },
    };
  }
  if (Object.keys(openai).length > 0) faults.openai = openai;
  if (chance(rng, 0.4)) faults.storage = { errors: [{ fault: pick(rng, [500, 503, "reset"] as const), rate: Math.round(rng() * 15) / 100 }] };
  if (chance(rng, 0.4)) faults.llamaparse = { errors: [{ fault: pick(rng, [429, 500, 503, "reset"] as const), rate: Math.round(rng() * 20) / 100 }] };
  if (chance(rng, 0.5)) {
    faults.webhooks = {
      duplicate: { rate: Math.round(rng() * 50) / 100, times: 1 + Math.floor(rng() * 2) },
      drop: { rate: Math.round(rng() * 30) / 100 },
      forge: { rate: Math.round(rng() * 30) / 100 },
      replay: { rate: Math.round(rng() * 30) / 100, afterMs: 500 },
    };
  }
  const kills = Math.floor(rng() * 4);
  const crashes = Array.from({ length: kills }, () => ({ document: Math.floor(rng() * documents), at: `${pick(rng, KILL_POINTS)}` }));
  // One targeted kill per (document, point): a second would be the same crash.
  const unique = crashes.filter((c, i) => crashes.findIndex((d) => d.document === c.document && d.at === c.at) === i);
  const restart = options.postgresRestarts && chance(rng, 0.25);
  return parseScenario(
    {
      name: `soak-${seed}-${round}`,
      description: `soak round ${round} of seed ${seed} (round seed ${s})`,
      seed: s,
      corpus: { documents, minKiB: 2, maxKiB: 16, reuploads: chance(rng, 0.3) ? 1 : 0 },
      workers: { processes: 2, slots: 1 + Math.floor(rng() * 2) },
      faults,
      phases,
      crashes: unique,
      ...(restart ? { postgresRestartAtMs: 500 + Math.floor(rng() * 4000) } : {}),
      deadlineMs: 180_000,
    },
    `soak round ${round}`,
  );
}

/**
 * Whether a soak round stops the soak. A broken invariant or a stuck job is a violation, and so is
 * a targeted kill that never came: every job passes the points kills are drawn from, so the round
 * did not test what it drew. What the clock decides (`onTheClock`: a restart or an outage phase
 * the round was too quick for) is reported, not a violation.
 */
export function isViolation(result: { invariants?: { ok: boolean } | null | undefined; errors: string[] }, onTheClock: readonly string[]): boolean {
  return result.invariants?.ok === false || result.errors.some((e) => !onTheClock.includes(e));
}
