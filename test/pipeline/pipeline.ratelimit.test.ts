/**
 * Rate limits (SPEC §5 Resilience): OpenAI's 429s slow the embedder down; they never fail a job.
 *
 * Time is simulated. The OpenAI mock's RPM/TPM windows and the worker's rate limiter read one
 * `ManualClock`; whenever the limiter waits (a 429's pause, an empty token budget) the test moves
 * the clock to the waiter's wake-up time at once. Nothing sleeps, and the simulated time that
 * passed is the slowdown.
 *
 * `createPipelineServices` builds its limiter on the system clock, so these tests put an
 * embedder wired the same way (limiter → breaker → the real OpenAI client, 429s retried after
 * the pause) on the manual clock into the environment's services.
 */
import { afterEach, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import type { FaultPlanInput } from "../../mocks/index.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { createEmbeddingsClient, type EmbeddingsClient } from "../../src/clients/openai.ts";
import { coerceError } from "../../src/errors.ts";
import { ManualClock } from "../../src/resilience/clock.ts";
import { OpenAIRateLimiter, RateLimitedEmbedder } from "../../src/resilience/rateLimiter.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

const MODEL = "text-embedding-3-small";
const ROUTE = "openai.embeddings";

type Event = { type: "send"; at: number } | { type: "429"; at: number; waitMs: number };

interface Setup {
  env: PipelineEnv;
  clock: ManualClock;
  /** Every embeddings request sent and every 429 answered, in the order they happened. */
  events: Event[];
}

let current: { env: PipelineEnv; stopPump: () => Promise<void> } | undefined;
afterEach(async () => {
  await current?.stopPump();
  await current?.env.close();
  current = undefined;
});

async function setup(faults: FaultPlanInput, env: Record<string, string> = {}): Promise<Setup> {
  // Start at real time: the mock signs webhooks with its clock and the API allows 5 min of skew.
  const clock = new ManualClock(Date.now());
  const pipeline = await startPipelineEnv({ seed: 17, faults, env: { EMBED_BATCH_SIZE: "4", ...env }, mocksNow: () => clock.now() });
  const events: Event[] = [];
  const client = createEmbeddingsClient({
    apiKey: pipeline.config.OPENAI_API_KEY,
    baseURL: pipeline.config.OPENAI_BASE_URL,
    model: pipeline.config.EMBED_MODEL,
  });
  const recording: EmbeddingsClient = {
    model: client.model,
    dimensions: client.dimensions,
    async embed(inputs, signal) {
      events.push({ type: "send", at: clock.now() });
      try {
        return await client.embed(inputs, signal);
      } catch (err) {
        const e = coerceError(err);
        if (e.status === 429) events.push({ type: "429", at: clock.now(), waitMs: e.retryAfterMs ?? 0 });
        throw err;
      }
    },
  };
  const limiter = new OpenAIRateLimiter({ requestsPerMinute: pipeline.config.OPENAI_RPM, tokensPerMinute: pipeline.config.OPENAI_TPM, clock });
  // As in createPipelineServices: the breaker guards the call, 429s are retried here 5 times.
  pipeline.services.embedder = new RateLimitedEmbedder({ client: recording, limiter, breaker: pipeline.services.breakers.openai, rateLimitRetries: 5 });

  // The clock pump: whenever someone waits on the clock, move time to their wake-up.
  let stopping = false;
  const pumping = (async () => {
    while (!stopping) {
      if (!(await clock.advanceToNext())) await new Promise((r) => setTimeout(r, 1));
    }
  })();
  current = {
    env: pipeline,
    stopPump: async () => {
      stopping = true;
      await pumping;
    },
  };
  return { env: pipeline, clock, events };
}

async function uploadAndRun(env: PipelineEnv, n: number, bytes: number) {
  const rng = mulberry32(n * 1000 + bytes);
  const docs = await Promise.all(Array.from({ length: n }, (_, i) => env.upload({ content: markdownDocument(rng, `Rate ${i}`, bytes), filename: `r${i}.md` })));
  const worker = env.worker({ concurrency: 4 });
  await worker.start();
  const states = await waitForTerminal(
    env,
    docs.map((d) => d.jobId),
  );
  await worker.stop();
  const jobs = await env.db.pool.query<{ status: string; last_error: unknown; chunks: number; vectors: number }>(
    `SELECT j.status, j.last_error,
            (SELECT count(*)::int FROM upload_pipeline.document_chunk_buffer c WHERE c.document_id = j.document_id) AS chunks,
            (SELECT count(*)::int FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id) WHERE c.document_id = j.document_id) AS vectors
       FROM upload_pipeline.upload_jobs j WHERE j.job_id = ANY($1)`,
    [docs.map((d) => d.jobId)],
  );
  const failures = await env.db.pool.query("SELECT 1 FROM upload_pipeline.job_events WHERE to_status LIKE 'failed_%' AND job_id = ANY($1)", [
    docs.map((d) => d.jobId),
  ]);
  return { states: [...states.values()], jobs: jobs.rows, failedEvents: failures.rowCount };
}

/** Every job completed with all its vectors, and none failed or even recorded an error. */
function expectCleanCompletion(result: Awaited<ReturnType<typeof uploadAndRun>>): void {
  expect(result.states.every((s) => s === "complete")).toBe(true);
  expect(result.failedEvents).toBe(0);
  for (const job of result.jobs) {
    expect(job.last_error).toBeNull();
    expect(job.vectors).toBe(job.chunks);
  }
}

describe("OpenAI rate limits", () => {
  it("a burst of 429s pauses the embedder for the time the server asked, and every job completes without a failed attempt", async () => {
    const { env, clock, events } = await setup({ openai: { bursts: [{ fault: 429, start: 3, count: 5, of: "route" }] } });
    const start = clock.now();
    const result = await uploadAndRun(env, 6, 2_500);

    // The 429s were absorbed by the embedder: no job even recorded a transient error.
    expectCleanCompletion(result);

    // The mock answered the whole burst with 429s.
    const stats = env.mocks.stats();
    expect(stats.rateLimited.byRoute[ROUTE]).toBe(5);
    expect(stats.faults[ROUTE]?.["429"]).toBe(5);
    const rejected = events.filter((e) => e.type === "429");
    expect(rejected).toHaveLength(5);

    // Slowed: after each 429, no request left before the pause it asked for had passed.
    events.forEach((e, i) => {
      if (e.type !== "429") return;
      for (const later of events.slice(i + 1)) if (later.type === "send") expect(later.at).toBeGreaterThanOrEqual(e.at + e.waitMs);
    });
    const longest = Math.max(...rejected.map((e) => (e.type === "429" ? e.waitMs : 0)));
    expect(longest).toBeGreaterThan(0);
    expect(clock.now() - start).toBeGreaterThanOrEqual(longest);
    // Billing: every chunk was embedded exactly once (a 429 is not billed).
    const chunks = result.jobs.reduce((n, j) => n + j.chunks, 0);
    expect(stats.openai.usage[MODEL]?.inputs).toBe(chunks);
  });

  it("another process drained the key's TPM window: the first request meets a 429, the limiter pauses and then keeps to the server's pace, jobs complete", async () => {
    const TPM = 1_000;
    const { env, clock, events } = await setup({ openai: { rateLimits: { tpm: TPM } } });
    // Another process on the same API key spends most of the server's token window first.
    const other = createEmbeddingsClient({ apiKey: env.config.OPENAI_API_KEY, baseURL: env.config.OPENAI_BASE_URL, model: env.config.EMBED_MODEL });
    const drained = (await other.embed(["budget ".repeat(900)])).usage.totalTokens;
    expect(drained).toBeGreaterThan(TPM - 150);
    const start = clock.now();
    const result = await uploadAndRun(env, 4, 3_000);

    expectCleanCompletion(result);
    // The configured budget (OPENAI_TPM) is far above what the server allows, so our own
    // limiter let the first request out; the server answered 429 on tokens.
    const stats = env.mocks.stats();
    expect(env.config.OPENAI_TPM).toBeGreaterThan(100 * TPM);
    expect(stats.openai.rateLimitHits.tokens).toBeGreaterThan(0);
    expect(events.filter((e) => e.type === "429")).toHaveLength(stats.openai.rateLimitHits.tokens);
    // After that the limiter followed the server's x-ratelimit headers: most requests were
    // accepted the first time, and
    // the billed tokens took at least the time the server's bucket (refilled at TPM per minute)
    // needs to let them through.
    const sent = stats.openai.usage[MODEL]!;
    expect(stats.openai.rateLimitHits.tokens).toBeLessThan(sent.requests);
    const tokens = sent.prompt_tokens;
    expect(tokens - drained).toBeGreaterThan(2 * TPM);
    expect(clock.now() - start).toBeGreaterThanOrEqual(((tokens - TPM) / TPM) * 60_000 * 0.95);
  });
});
