/**
 * The fleet on one key: 1, 2, 4 and 8 real processes (`bench/fleetCaller.ts`, the production
 * embedder as the worker builds it) against one OpenAI mock key with a TPM limit the fleet can
 * saturate, each run twice: with the shared governor (`RATE_GOVERNOR=shared`, the default) and
 * with it off (`local`: each process its own bucket at the full limit, following the headers,
 * as before the governor). Figures from the mock's own counters over a window that starts once
 * the full bucket both sides start with is spent (the mock's remaining tokens below 1 % of TPM, so
 * what was left in it can add at most 1,500 tokens to the window):
 *
 *   ratio = tokens billed in the window ÷ (TPM × window length);   429s as % of all answers.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { countBatchTokens } from "../src/clients/tokens.ts";
import { mulberry32 } from "../mocks/shared/rng.ts";
import { startMockServer } from "../mocks/server.ts";
import { buildBatches, embeddingsCounters, type Sample } from "./ratelimit.ts";
import { createDatabase, figure, round, sleep, type BenchContext, type BenchResult, type Figure } from "./support.ts";

const CALLER_ENTRY = new URL("./fleetCaller.ts", import.meta.url).pathname;
const MODEL = "text-embedding-3-small";
const TPM = 150_000;
const FLEET_SIZES = [1, 2, 4, 8] as const;
const CALLERS_PER_PROCESS = 4;

type Mode = "shared" | "local";

interface FleetRun {
  processes: number;
  mode: Mode;
  windowSeconds: number;
  /** The mock's remaining tokens at the window's ends (what the bucket itself added or kept). */
  bucketRemaining: { windowStart: number; windowEnd: number };
  tokensPerMinute: number;
  tpmRatio: number;
  requests: number;
  rateLimited: number;
  rateLimitedPct: number;
  /** What each process counted (calls, errors that reached its callers). */
  callers: unknown[];
  /** Tokens/min over 2 s steps, for the report. */
  timeline: { t: number; tokensPerMinute: number }[];
}

export async function runFleetBench(ctx: BenchContext): Promise<BenchResult> {
  const started = Date.now();
  const batches = buildBatches(mulberry32(2024), 240);
  const meanTokens = batches.reduce((a, b) => a + countBatchTokens(b), 0) / batches.length;
  // As in the ratelimit benchmark: the token limit binds first, RPM 25 % above what it lets through.
  const rpm = Math.ceil((1.25 * TPM) / meanTokens);
  const windowMs = ctx.quick ? 10_000 : 20_000;
  const runs: FleetRun[] = [];
  for (const processes of FLEET_SIZES) {
    for (const mode of ["shared", "local"] as const) {
      runs.push(await runOnce(ctx, { processes, mode, rpm, windowMs }));
    }
  }
  const figures: Figure[] = FLEET_SIZES.flatMap((n) => {
    const on = runs.find((r) => r.processes === n && r.mode === "shared")!;
    const off = runs.find((r) => r.processes === n && r.mode === "local")!;
    return [
      figure(`tpm_ratio_${n}p`, `${n} process${n > 1 ? "es" : ""}: tokens/min ÷ TPM, governor on`, round(on.tpmRatio, 3), "ratio", { op: ">=", bound: 0.95 }),
      figure(`rate_limited_pct_${n}p`, `${n} process${n > 1 ? "es" : ""}: 429s, % of requests, governor on`, round(on.rateLimitedPct, 2), "%", {
        op: "<",
        bound: 1,
      }),
      figure(`tpm_ratio_${n}p_off`, `${n} process${n > 1 ? "es" : ""}: tokens/min ÷ TPM, governor off`, round(off.tpmRatio, 3), "ratio"),
      figure(`rate_limited_pct_${n}p_off`, `${n} process${n > 1 ? "es" : ""}: 429s, % of requests, governor off`, round(off.rateLimitedPct, 2), "%"),
    ];
  });
  return {
    name: "fleet",
    title: "Fleet on one key: tokens/min and 429s at 1, 2, 4, 8 processes, shared governor on and off",
    figures,
    notes: [
      `OpenAI mock over HTTP at ${TPM.toLocaleString("en-US")} TPM and ${rpm} RPM; each process runs ${CALLERS_PER_PROCESS} callers of the production embedder (createPipelineServices with a pool, as npm run worker builds it), batches of 2–10 chunk-sized inputs (${Math.round(meanTokens)} tokens on average); a ${windowMs / 1000} s window per run, starting once the mock's initial full bucket is spent; 429s counted over the whole run, burst included.`,
      "Governor off = RATE_GOVERNOR=local: every process has the whole budget and follows the headers and 429 pauses on its own (the behaviour before the governor).",
      ...runs.map(
        (r) =>
          `${r.processes} process(es), governor ${r.mode === "shared" ? "on" : "off"}: ${Math.round(r.tokensPerMinute).toLocaleString("en-US")} tokens/min over ${r.windowSeconds.toFixed(1)} s; ${r.rateLimited} of ${r.requests} answers were 429 (${round(r.rateLimitedPct, 2)} %).`,
      ),
    ],
    details: { tpm: TPM, rpm, meanTokensPerRequest: meanTokens, runs },
    durationMs: Date.now() - started,
  };
}

async function runOnce(ctx: BenchContext, o: { processes: number; mode: Mode; rpm: number; windowMs: number }): Promise<FleetRun> {
  ctx.log(`fleet: ${o.processes} process(es), governor ${o.mode === "shared" ? "on" : "off"}`);
  const db = await createDatabase(ctx, "fleet", 2);
  const mock = await startMockServer({ seed: 9, faults: { openai: { rateLimits: { rpm: o.rpm, tpm: TPM } } } });
  const children: ChildProcess[] = [];
  const outputs: string[] = [];
  try {
    for (let i = 0; i < o.processes; i++) {
      const child = spawn(process.execPath, [CALLER_ENTRY], {
        env: {
          ...process.env,
          ...mock.env,
          DATABASE_URL: db.url,
          WEBHOOK_BASE_URL: "http://127.0.0.1:9", // not called; the config requires it
          EMBED_MODEL: MODEL,
          OPENAI_TPM: String(TPM),
          OPENAI_RPM: String(o.rpm),
          RATE_GOVERNOR: o.mode,
          FLEET_SEED: String(i + 1),
          FLEET_CALLERS: String(CALLERS_PER_PROCESS),
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      const index = outputs.push("") - 1;
      child.stdout!.on("data", (c: Buffer) => (outputs[index] += c.toString("utf8")));
      child.stderr!.on("data", (c: Buffer) => (outputs[index] += c.toString("utf8")));
      children.push(child);
    }
    const deadline = Date.now() + 180_000; // 8 processes starting on a busy 2-core machine
    while (!outputs.every((out) => out.includes("fleet caller ready"))) {
      if (Date.now() > deadline || children.some((c) => c.exitCode !== null)) {
        throw new Error(`fleet callers did not start:\n${outputs.map((out) => out.split("\n").slice(-5).join("\n")).join("\n---\n")}`);
      }
      await sleep(50);
    }

    const t0 = performance.now();
    const sample = (): Sample => ({ t: performance.now() - t0, ...embeddingsCounters(mock, MODEL) });
    const first = sample();
    const timeline: Sample[] = [first];
    const ticker = setInterval(() => timeline.push(sample()), 2_000);
    const remaining = () => Number(mock.state.rateLimiter.headers(MODEL)["x-ratelimit-remaining-tokens"]);
    const burstOver = performance.now() + 60_000;
    while (remaining() > 0.01 * TPM && performance.now() < burstOver) await sleep(100);
    const from = sample();
    const remainingAtStart = remaining();
    await sleep(o.windowMs);
    const to = sample();
    const remainingAtEnd = remaining();
    clearInterval(ticker);
    timeline.push(to);

    const exits = children.map((c) => new Promise<void>((resolve) => c.once("exit", () => resolve())));
    for (const c of children) c.kill("SIGTERM");
    await Promise.race([Promise.all(exits), sleep(10_000)]);
    const windowSeconds = (to.t - from.t) / 1000;
    const tokensPerMinute = ((to.tokens - from.tokens) / windowSeconds) * 60;
    // 429 share over the whole run (burst included): a fleet that overshoots does so at once.
    const requests = to.ok + to.rateLimited + to.otherStatus - (first.ok + first.rateLimited + first.otherStatus);
    const rateLimited = to.rateLimited - first.rateLimited;
    const run: FleetRun = {
      processes: o.processes,
      mode: o.mode,
      windowSeconds,
      bucketRemaining: { windowStart: remainingAtStart, windowEnd: remainingAtEnd },
      tokensPerMinute,
      tpmRatio: tokensPerMinute / TPM,
      requests,
      rateLimited,
      rateLimitedPct: requests ? (100 * rateLimited) / requests : 0,
      callers: outputs.map((out) => {
        const line = out
          .trim()
          .split("\n")
          .findLast((l) => l.startsWith("{"));
        return line ? JSON.parse(line) : null;
      }),
      timeline: timeline
        .slice(1)
        .map((s, i) => ({ t: Math.round(s.t), tokensPerMinute: Math.round(((s.tokens - timeline[i]!.tokens) / ((s.t - timeline[i]!.t) / 1000)) * 60) })),
    };
    ctx.log(
      `fleet: ${o.processes} process(es), governor ${o.mode === "shared" ? "on" : "off"}: ${round(run.tpmRatio, 3)}× TPM, ${round(run.rateLimitedPct, 2)} % 429s (${rateLimited}/${requests})`,
    );
    return run;
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
    await mock.close();
    await db.drop();
  }
}
