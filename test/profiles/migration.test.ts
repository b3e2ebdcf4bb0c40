/**
 * Embedding profiles and `npm run migrate-model` against the real embedded PostgreSQL, the real
 * stages and the OpenAI mock: the first start's profile from the configuration, plan (exact
 * figures, nothing written), start (bulk-lane jobs, no re-chunking for the same chunker), dual
 * embedding of an upload finishing during the migration, cutover (refused while incomplete,
 * then GET /jobs switches), abort (the active profile's rows byte-identical), and the CLI's
 * errors naming the field.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { markdownDocument } from "../../harness/corpus.ts";
import { expectedEmbedding } from "../../mocks/openai/embeddings.ts";
import { mulberry32 } from "../../mocks/shared/rng.ts";
import { costUsd } from "../../src/clients/tokens.ts";
import { vectorSha } from "../../src/ids.ts";
import { checkInvariants } from "../../harness/invariants/index.ts";
import { CHUNKER_NAME, CHUNKER_VERSION } from "../../src/chunking/markdownChunker.ts";
import { UsageError } from "../../src/ops/cli.ts";
import { showJob } from "../../src/ops/dlq.ts";
import { migrateModelMain } from "../../src/ops/migrateModel.ts";
import { profileJobId } from "../../src/profiles/jobs.ts";
import { parseProfileSpec } from "../../src/profiles/profiles.ts";
import { startPipelineEnv, waitForTerminal, type PipelineEnv } from "../support/pipeline.ts";

let env: PipelineEnv;
const docs: { documentId: string; jobId: string }[] = [];
const rng = mulberry32(14);

beforeAll(async () => {
  env = await startPipelineEnv({ seed: 14, env: { EMBED_MODEL: "text-embedding-ada-002" } });
  for (const title of ["Alpha", "Beta", "Gamma"]) docs.push(await env.upload({ content: markdownDocument(rng, title, 1_500) }));
  await drain(docs.map((d) => d.jobId));
}, 120_000);
afterAll(() => env?.close());

async function drain(jobIds: string[]): Promise<void> {
  const worker = env.worker();
  await worker.start();
  try {
    const states = await waitForTerminal(env, jobIds, 60_000);
    expect([...states.values()]).toEqual(jobIds.map(() => "complete"));
  } finally {
    await worker.stop();
  }
}

async function cli(...argv: string[]) {
  const lines: string[] = [];
  const code = await migrateModelMain(argv, { DATABASE_URL: env.db.url }, (l) => lines.push(l));
  return { code, out: lines.join("\n") };
}

async function usage(...argv: string[]): Promise<string> {
  const err = await migrateModelMain(argv, { DATABASE_URL: env.db.url }, () => {}).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UsageError);
  return (err as Error).message;
}

/** Every vector of the buffers in one (chunker, model, version), as comparable rows. */
async function vectors(model: string, version: string) {
  const { rows } = await env.db.pool.query<{ chunk_id: string; document_id: string; text: string; vector_sha: string; dims: number }>(
    `SELECT c.chunk_id, c.document_id, c.text, v.vector_sha, array_length(v.embedding, 1) AS dims
       FROM upload_pipeline.document_vector_buffer v JOIN upload_pipeline.document_chunk_buffer c USING (chunk_id)
      WHERE v.embed_model = $1 AND v.embed_version = $2 ORDER BY c.chunk_id`,
    [model, version],
  );
  return rows;
}

const chunker = { name: CHUNKER_NAME, version: CHUNKER_VERSION };
const SMALL_512 = ["--to", "small-512", "--model", "text-embedding-3-small", "--dimensions", "512"];

describe("embedding profiles", () => {
  it("the first start made the configuration's profile active: ada-002 at 1536, the job's chunker settings", async () => {
    const { rows } = await env.db.pool.query(
      "SELECT profile_id, role, embed_model, embed_dimensions, embed_version, chunk_max_tokens FROM upload_pipeline.embedding_profiles",
    );
    expect(rows).toEqual([
      { profile_id: "default", role: "active", embed_model: "text-embedding-ada-002", embed_dimensions: 1536, embed_version: "d1536", chunk_max_tokens: 128 },
    ]);
    const pinned = await env.db.pool.query("SELECT DISTINCT settings->>'profile_id' AS p FROM upload_pipeline.upload_jobs");
    expect(pinned.rows).toEqual([{ p: "default" }]);
  });

  it("a profile is validated field by field", () => {
    const base = { chunkerName: "md-heading-token", chunkerVersion: "1.0.0", chunkMaxTokens: 512, chunkOverlapTokens: 64 };
    const bad = parseProfileSpec({ id: "Bad Id", chunker: { version: "2.0.0" }, embedding: { model: "text-embedding-ada-002", dimensions: 512 } }, base);
    expect(bad.ok).toBe(false);
    const errors = bad.ok ? [] : bad.errors;
    expect(errors).toEqual([
      expect.stringMatching(/^id: must be 1–63 characters/),
      expect.stringMatching(/^chunker\.version: must be 1\.0\.0 \(this code's chunker\) or 1\.0\.0\+<label>/),
      "embedding.dimensions: text-embedding-ada-002 only embeds at 1536 dimensions",
    ]);
    expect(parseProfileSpec({ id: "x", chunker: { max_tokens: 100 }, embedding: { model: "text-embedding-3-small" } }, base)).toEqual({
      ok: false,
      errors: ["chunker.overlap_tokens: must be at most half of chunker.max_tokens (100)"],
    });
    expect(parseProfileSpec({ id: "x", embedding: { model: "text-embedding-4" } }, base)).toMatchObject({
      ok: false,
      errors: [expect.stringMatching(/^embedding\.model: must be one of/)],
    });
    // Chunker settings left out are the base's; other settings get a version of their own.
    expect(parseProfileSpec({ id: "x", embedding: { model: "text-embedding-3-small", dimensions: 512 } }, base)).toMatchObject({
      ok: true,
      profile: { chunkerVersion: "1.0.0", chunkMaxTokens: 512, chunkOverlapTokens: 64, embedDimensions: 512, embedVersion: "d512" },
    });
    expect(parseProfileSpec({ id: "x", chunker: { max_tokens: 256, overlap_tokens: 32 }, embedding: { model: "text-embedding-3-small" } }, base)).toMatchObject(
      {
        ok: true,
        profile: { chunkerVersion: "1.0.0+256-32", embedDimensions: 1536 },
      },
    );
    expect(parseProfileSpec({ id: "x", embedding: { model: "text-embedding-3-large", dimensions: 4000 } }, base)).toMatchObject({
      ok: false,
      errors: ["embedding.dimensions: must be at most 3072 for text-embedding-3-large"],
    });
  });

  it("the CLI refuses bad flags and files with the field named, and changes nothing", async () => {
    expect(await usage("plan", "--to", "small", "--model", "text-embedding-3-small", "--dimensions", "two")).toMatch(
      /--dimensions takes a whole number \(got 'two'\)/,
    );
    expect(await usage("plan", "--to", "small")).toMatch(/--model is needed/);
    expect(await usage("plan", "--to", "ada2", "--model", "text-embedding-ada-002", "--dimensions", "512")).toMatch(
      /embedding\.dimensions: text-embedding-ada-002 only/,
    );
    expect(await usage("status", "--to", "x")).toMatch(/status takes no --to/);
    expect(await usage("plan", "--model", "text-embedding-3-small")).toMatch(/--to is needed/);
    expect(await usage("cutover", "--force", "--bogus")).toMatch(/Unknown option '--bogus'/);
    expect(await usage("rollback")).toMatch(/unknown command 'rollback'/);
    const dir = mkdtempSync(join(tmpdir(), "profile-"));
    writeFileSync(join(dir, "p.json"), JSON.stringify({ id: "s", embedding: { model: "text-embedding-3-small", dimensions: 0 } }));
    expect(await usage("plan", "--to", join(dir, "p.json"))).toMatch(/embedding\.dimensions: Too small|embedding\.dimensions: .*>=1/i);
    expect(await usage("plan", "--to", join(dir, "missing.json"))).toMatch(/missing\.json: no such file/);
    const profiles = await env.db.pool.query("SELECT count(*)::int AS n FROM upload_pipeline.embedding_profiles");
    expect(profiles.rows[0].n).toBe(1);
  });

  it("plan prints the documents, chunks, tokens and both prices, exactly, and writes nothing", async () => {
    const stored = await env.db.pool.query<{ chunks: number; tokens: number }>(
      "SELECT count(*)::int AS chunks, sum(token_count)::int AS tokens FROM upload_pipeline.document_chunk_buffer",
    );
    const { chunks, tokens } = stored.rows[0]!;
    const before = await env.db.pool.query("SELECT count(*)::int AS n FROM upload_pipeline.upload_jobs");
    const plan = await cli("plan", ...SMALL_512);
    expect(plan.code).toBe(0);
    expect(plan.out).toContain(`documents: 3  chunks: ${chunks}  tokens: ${tokens}  (embeds the stored chunks: no re-chunking)`);
    const sync = costUsd("text-embedding-3-small", tokens);
    expect(plan.out).toContain(`estimated cost: $${sync.toFixed(6)} at the synchronous price, $${(sync / 2).toFixed(6)} through the Batch API`);
    expect((await env.db.pool.query("SELECT count(*)::int AS n FROM upload_pipeline.upload_jobs")).rows[0].n).toBe(before.rows[0].n);
    expect((await env.db.pool.query("SELECT count(*)::int AS n FROM upload_pipeline.embedding_profiles")).rows[0].n).toBe(1);
    // A plan for the active profile's own settings has nothing to do.
    expect((await cli("plan", "--to", "same", "--model", "text-embedding-ada-002", "--chunk-max-tokens", "128", "--chunk-overlap-tokens", "16")).out).toMatch(
      /refused \(nothing_to_migrate\)/,
    );
  });

  it("start → status → cutover (refused until complete) → search and GET /jobs switch; uploads during it land in both profiles", async () => {
    const adaBefore = await vectors("text-embedding-ada-002", "d1536");
    expect(adaBefore.length).toBeGreaterThan(6);

    const started = await cli("start", ...SMALL_512);
    expect(started.out).toContain("started: 3 documents queued in the bulk lane for small-512");
    const jobs = await env.db.pool.query(
      "SELECT job_id, status, lane, settings->>'profile_id' AS profile FROM upload_pipeline.upload_jobs WHERE profile_id = 'small-512'",
    );
    expect(jobs.rows).toHaveLength(3);
    // Same chunker: the jobs start at chunks_stored and never chunk again.
    expect(jobs.rows.every((r) => r.status === "chunks_stored" && r.lane === "bulk" && r.profile === "small-512")).toBe(true);
    expect(new Set(jobs.rows.map((r) => r.job_id))).toEqual(new Set(docs.map((d) => profileJobId(d.documentId, "small-512"))));
    // A second start queues nothing more.
    expect((await cli("start", ...SMALL_512)).out).toContain("started: 0 documents queued");

    const refused = await cli("cutover");
    expect(refused.code).toBe(1);
    expect(refused.out).toMatch(/refused \(target_incomplete\): profile small-512 holds 0 of 3 documents/);

    // An upload during the migration: embedded in the active profile, then queued for the target.
    const late = await env.upload({ content: markdownDocument(rng, "Delta", 1_500) });
    await drain([late.jobId, ...jobs.rows.map((r) => r.job_id)]);
    await drain([profileJobId(late.documentId, "small-512")]);

    const status = await cli("status");
    expect(status.out).toMatch(/progress: 4 of 4 documents complete/);
    const billed = await env.db.pool.query<{ tokens: number }>(
      "SELECT sum((progress->>'tokens')::int)::int AS tokens FROM upload_pipeline.upload_jobs WHERE profile_id = 'small-512'",
    );
    expect(status.out).toContain(`so far: ${billed.rows[0]!.tokens} tokens`);

    // The active profile's vectors are untouched; the target's equal a recomputation at 512.
    const adaAfter = await vectors("text-embedding-ada-002", "d1536");
    expect(adaAfter.filter((r) => r.document_id !== late.documentId)).toEqual(adaBefore);
    const small = await vectors("text-embedding-3-small", "d512");
    expect(small.map((r) => r.chunk_id)).toEqual(adaAfter.map((r) => r.chunk_id));
    for (const row of small) {
      expect(row.dims).toBe(512);
      expect(row.vector_sha).toBe(vectorSha(expectedEmbedding("text-embedding-3-small", row.text, 512)));
    }

    const service = { authorization: `Bearer ${env.config.SUPABASE_SERVICE_ROLE_KEY}` };
    const job = async () => (await env.api.inject({ method: "GET", url: `/jobs/${late.documentId}`, headers: service })).json();
    const beforeCutover = await job();
    expect(beforeCutover.profile).toBe("default");
    const chunkCount = beforeCutover.progress.chunks.stored;
    expect(beforeCutover.progress.vectors.stored).toBe(chunkCount);

    expect((await cli("cutover")).out).toBe("cut over: default → small-512; default is retired, its data kept");
    const afterCutover = await job();
    expect(afterCutover.profile).toBe("small-512");
    expect(afterCutover.progress.vectors.stored).toBe(chunkCount);
    const roles = await env.db.pool.query("SELECT profile_id, role FROM upload_pipeline.embedding_profiles ORDER BY profile_id");
    expect(roles.rows).toEqual([
      { profile_id: "default", role: "retired" },
      { profile_id: "small-512", role: "active" },
    ]);
  }, 180_000);

  it("the scenario invariants, checked per profile, hold for both profiles and catch a wrong vector in the target; later uploads pin the new profile", async () => {
    const { usage, batchUsage, batches } = env.mocks.stats().openai;
    const input = {
      batchApi: { lane: env.config.EMBED_BULK_VIA_BATCH_API === "true", batchesCreated: batches.created },
      documentIds: (await env.db.pool.query<{ document_id: string }>("SELECT document_id FROM upload_pipeline.documents")).rows.map((r) => r.document_id),
      expectedEmbedding: (model: string, text: string, dims: number) => expectedEmbedding(model, text, dims),
      mockUsage: {
        promptTokensByModel: Object.fromEntries(Object.entries(usage).map(([m, u]) => [m, u.prompt_tokens])),
        batchPromptTokensByModel: Object.fromEntries(Object.entries(batchUsage).map(([m, u]) => [m, u.prompt_tokens])),
      },
      crashesHappened: false,
    };
    const ada = { model: "text-embedding-ada-002", version: "d1536", dimensions: 1536 };
    const small = { model: "text-embedding-3-small", version: "d512", dimensions: 512 };
    const uploads = () => checkInvariants(env.db.pool, { ...input, embed: ada, chunker, profile: { jobs: null, otherEmbeds: [small] } });
    const target = () => checkInvariants(env.db.pool, { ...input, embed: small, chunker, profile: { jobs: "small-512", otherEmbeds: [ada] } });
    const failed = (r: Awaited<ReturnType<typeof uploads>>) => r.checks.filter((c) => !c.ok).map((c) => c.name);
    expect(failed(await uploads())).toEqual([]);
    expect(failed(await target())).toEqual([]);
    // Without the per-profile pass, the other profile's vectors are "unexpected" rows.
    const mixed = await checkInvariants(env.db.pool, { ...input, embed: small, chunker });
    expect(mixed.checks.find((c) => c.name === "no_duplicate_or_missing_rows")!.violations.join("\n")).toMatch(/unexpected model\/version/);
    // A planted wrong vector in the target profile is caught there.
    await env.db.pool.query(
      `UPDATE upload_pipeline.document_vector_buffer SET embedding[1] = embedding[1] + 0.5
        WHERE (chunk_id, embed_model) = (SELECT chunk_id, embed_model FROM upload_pipeline.document_vector_buffer WHERE embed_model = 'text-embedding-3-small' ORDER BY chunk_id LIMIT 1)`,
    );
    expect(failed(await target())).toContain("vectors_match_mock");
    expect(failed(await uploads())).not.toContain("vectors_match_mock");

    // New uploads now pin the new profile, and queue nothing for the retired one.
    const after = await env.upload({ content: markdownDocument(rng, "Epsilon", 800) });
    await drain([after.jobId]);
    const pinned = await env.db.pool.query("SELECT settings->>'profile_id' AS p FROM upload_pipeline.upload_jobs WHERE document_id = $1", [after.documentId]);
    expect(pinned.rows).toEqual([{ p: "small-512" }]);
  });

  it("abort of a re-chunking migration removes its jobs, chunks and vectors, and leaves the active profile's rows as they were", async () => {
    const snapshot = async () =>
      (
        await env.db.pool.query(
          `SELECT c.chunk_id, c.chunk_sha, v.embed_model, v.embed_version, v.vector_sha FROM upload_pipeline.document_chunk_buffer c
             LEFT JOIN upload_pipeline.document_vector_buffer v USING (chunk_id) ORDER BY 1, 3, 4`,
        )
      ).rows;
    const before = await snapshot();
    const jobsBefore = (await env.db.pool.query("SELECT job_id, status, updated_at FROM upload_pipeline.upload_jobs ORDER BY job_id")).rows;
    const planned = await cli(
      ...["plan", "--to", "large-256", "--model", "text-embedding-3-large", "--dimensions", "256"],
      ...["--chunk-max-tokens", "256", "--chunk-overlap-tokens", "32", "--chunker-version", "1.0.0"],
    );
    expect(planned.out).toMatch(/refused \(chunker_conflict\): chunker\.version: profile \S+ already uses md-heading-token 1\.0\.0 with max_tokens 128/);
    const start = await cli(
      "start",
      ...["--to", "large-256", "--model", "text-embedding-3-large", "--dimensions", "256", "--chunk-max-tokens", "256", "--chunk-overlap-tokens", "32"],
    );
    expect(start.out).toMatch(/documents: 5 {2}chunks: ≈ \d+ {2}tokens: ≈ \d+ {2}\(re-chunks/);
    const queued = await env.db.pool.query("SELECT job_id, status FROM upload_pipeline.upload_jobs WHERE profile_id = 'large-256'");
    expect(queued.rows.map((r) => r.status)).toEqual(queued.rows.map(() => "parse_validated"));
    await drain(queued.rows.map((r) => r.job_id));
    const rechunked = await env.db.pool.query<{ n: number; max: number }>(
      "SELECT count(*)::int AS n, max(token_count)::int AS max FROM upload_pipeline.document_chunk_buffer WHERE chunker_version = '1.0.0+256-32'",
    );
    expect(rechunked.rows[0]!.n).toBeGreaterThan(0);
    expect(rechunked.rows[0]!.max).toBeGreaterThan(128);

    // The dead letter names a document's failed migration job before its complete upload job.
    const [failedJob] = queued.rows;
    const { rows: failedDoc } = await env.db.pool.query(
      "UPDATE upload_pipeline.upload_jobs SET status = 'failed_embedding' WHERE job_id = $1 RETURNING document_id",
      [failedJob.job_id],
    );
    expect((await showJob(env.db.pool, failedDoc[0].document_id))?.job).toMatchObject({ job_id: failedJob.job_id, profile_id: "large-256" });

    const aborted = await cli("abort");
    expect(aborted.out).toMatch(/aborted: large-256 removed with 5 jobs, \d+ vectors and \d+ chunks only it used/);
    expect(await snapshot()).toEqual(before);
    expect((await env.db.pool.query("SELECT job_id, status, updated_at FROM upload_pipeline.upload_jobs ORDER BY job_id")).rows).toEqual(jobsBefore);
    expect(
      (
        await env.db.pool.query(
          "SELECT count(*)::int AS n FROM upload_pipeline.job_events e WHERE NOT EXISTS (SELECT 1 FROM upload_pipeline.upload_jobs j WHERE j.job_id = e.job_id)",
        )
      ).rows[0].n,
    ).toBe(0);
    expect((await cli("abort")).out).toMatch(/refused \(no_migration\)/);
  }, 180_000);
});
