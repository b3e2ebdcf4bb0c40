/**
 * One process of the fleet benchmark (`bench/fleet.ts`): the production embedder
 * (`createPipelineServices` with a database pool, as `npm run worker` builds it) driven by
 * FLEET_CALLERS concurrent callers embedding batches back to back until SIGTERM. The
 * environment is the worker's (OPENAI_*, DATABASE_URL, RATE_GOVERNOR) plus FLEET_SEED.
 * Prints one JSON line of its own counts on exit.
 */
import pg from "pg";
import { loadConfig } from "../src/config.ts";
import { coerceError } from "../src/errors.ts";
import { createLogger } from "../src/logger.ts";
import { createPipelineServices } from "../src/services.ts";
import { mulberry32 } from "../mocks/shared/rng.ts";
import { buildBatches } from "./ratelimit.ts";

const config = loadConfig();
const log = createLogger({ level: "warn", name: "fleet-caller" });
const pool = new pg.Pool({ connectionString: config.DATABASE_URL, max: 4 });
pool.on("error", () => {});
const services = createPipelineServices(config, { db: pool, holder: `fleet:${process.pid}`, log });
const batches = buildBatches(mulberry32(Number(process.env.FLEET_SEED ?? 1)), 240);
const stop = new AbortController();
process.once("SIGTERM", () => stop.abort(new Error("benchmark over")));

const counts = { calls: 0, errors: {} as Record<string, number> };
let next = 0;
process.stdout.write("fleet caller ready\n");
await Promise.all(
  Array.from({ length: Number(process.env.FLEET_CALLERS ?? 4) }, async () => {
    while (!stop.signal.aborted) {
      const batch = batches[next++ % batches.length]!;
      counts.calls += 1;
      try {
        await services.embedder.embed(batch, stop.signal);
      } catch (err) {
        if (stop.signal.aborted) break;
        const code = coerceError(err).code;
        counts.errors[code] = (counts.errors[code] ?? 0) + 1;
        // What the worker does after a job-level failure, in miniature: back off a little.
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }),
);
process.stdout.write(`${JSON.stringify(counts)}\n`);
await pool.end();
