/**
 * A model migration (issue 14): plan → start → status → cutover | abort. The target profile is
 * filled side by side by migration jobs in the bulk lane while the active one keeps serving;
 * `cutover` switches search and GET /jobs to it in one transaction; `abort` removes what the
 * target wrote and never touches the active profile.
 */
import type pg from "pg";
import { costUsd } from "../clients/tokens.ts";
import { PermanentError } from "../errors.ts";
import { withTransaction } from "../db/transaction.ts";
import { enqueueProfileJob, lockActiveProfile } from "./jobs.ts";
import { chunkerConflict, loadProfiles, PROFILE_COLUMNS, type Profile } from "./profiles.ts";

type NewProfile = Omit<Profile, "role">;

/** A refused migration step: an operator's mistake or a state that forbids it (exit 1, no stack). */
export class MigrationRefused extends PermanentError {}

export interface MigrationPlan {
  active: Profile;
  target: NewProfile;
  /** Documents complete in the active profile: each gets one migration job. */
  documents: number;
  /** Whether the target re-chunks (its chunker differs from every stored one). */
  rechunk: boolean;
  /** Chunks to embed (exact when the chunks are stored; estimated when re-chunking). */
  chunks: number;
  tokens: number;
  /** Whether chunks and tokens are estimates (re-chunking: known only once chunked). */
  estimated: boolean;
  costUsd: { synchronous: number; batch: number };
}

/** The Batch API bills half the synchronous price (OpenAI's published discount). */
export const BATCH_PRICE_FACTOR = 0.5;

/** The stored profiles and the active one, or a refusal saying how the first one is written. */
export async function requireActive(db: Pick<pg.Pool, "query">): Promise<{ active: Profile; profiles: Profile[] }> {
  const profiles = await loadProfiles(db);
  const active = profiles.find((p) => p.role === "active");
  if (!active) {
    throw new MigrationRefused(
      "no_active_profile",
      "no active embedding profile yet: a worker writes it at its first start from EMBED_MODEL, EMBED_DIMENSIONS and CHUNK_*; start one, then plan",
    );
  }
  return { active, profiles };
}

/** Why `target` cannot be migrated to, given the stored profiles (undefined: it can). */
function refusal(target: NewProfile, profiles: readonly Profile[]): { code: string; message: string } | undefined {
  const same = profiles.find((p) => p.profileId === target.profileId);
  if (same?.role === "active") return { code: "already_active", message: `profile ${target.profileId} is already the active profile` };
  if (same?.role === "retired") return { code: "profile_exists", message: `id: profile ${target.profileId} exists (retired); give the new profile another id` };
  const otherTarget = profiles.find((p) => p.role === "target" && p.profileId !== target.profileId);
  if (otherTarget) {
    return {
      code: "migration_in_progress",
      message: `a migration to ${otherTarget.profileId} is in progress: cut over to it or abort it first (npm run migrate-model -- status)`,
    };
  }
  if (same && !sameDefinition(same, target)) {
    return { code: "profile_exists", message: `id: profile ${target.profileId} is being migrated to with other settings; abort it or use its settings` };
  }
  const active = profiles.find((p) => p.role === "active")!;
  if (active.embedModel === target.embedModel && active.embedVersion === target.embedVersion && active.chunkerVersion === target.chunkerVersion) {
    return { code: "nothing_to_migrate", message: `profile ${target.profileId} has the active profile's chunker and embedding: there is nothing to re-embed` };
  }
  const conflict = chunkerConflict(
    target,
    profiles.filter((p) => p.profileId !== target.profileId),
  );
  return conflict ? { code: "chunker_conflict", message: conflict } : undefined;
}

function sameDefinition(a: NewProfile, b: NewProfile): boolean {
  const keys: Array<keyof NewProfile> = [
    "chunkerName",
    "chunkerVersion",
    "chunkMaxTokens",
    "chunkOverlapTokens",
    "embedModel",
    "embedDimensions",
    "embedVersion",
  ];
  return keys.every((k) => a[k] === b[k]);
}

/** What a migration to `target` involves and costs; writes nothing. */
export async function planMigration(db: Pick<pg.Pool, "query">, target: NewProfile): Promise<MigrationPlan> {
  const { active, profiles } = await requireActive(db);
  const refused = refusal(target, profiles);
  if (refused) throw new MigrationRefused(refused.code, refused.message);
  // The active profile's stored chunks of every complete document, and the target chunker's
  // where they are already stored (a chunker shared with the active or a retired profile).
  const { rows } = await db.query<{ documents: number; chunks: number; tokens: string; target_chunks: number; target_tokens: string }>(
    `WITH done AS (
       SELECT j.document_id FROM upload_pipeline.upload_jobs j WHERE j.profile_id IS NULL AND j.status = 'complete')
     SELECT (SELECT count(*)::int FROM done) AS documents,
            count(*) FILTER (WHERE c.chunker_name = $1 AND c.chunker_version = $2)::int AS chunks,
            coalesce(sum(c.token_count) FILTER (WHERE c.chunker_name = $1 AND c.chunker_version = $2), 0) AS tokens,
            count(*) FILTER (WHERE c.chunker_name = $3 AND c.chunker_version = $4)::int AS target_chunks,
            coalesce(sum(c.token_count) FILTER (WHERE c.chunker_name = $3 AND c.chunker_version = $4), 0) AS target_tokens
       FROM done JOIN upload_pipeline.document_chunk_buffer c USING (document_id)`,
    [active.chunkerName, active.chunkerVersion, target.chunkerName, target.chunkerVersion],
  );
  const r = rows[0]!;
  const stored = profiles.some((p) => p.chunkerName === target.chunkerName && p.chunkerVersion === target.chunkerVersion && p.role !== "target");
  let chunks = r.target_chunks;
  let tokens = Number(r.target_tokens);
  if (!stored) {
    // Re-chunking: the text's tokens are the active chunks' tokens less their overlaps; the
    // target's chunks each repeat its overlap.
    const textTokens = Number(r.tokens) - Math.max(0, r.chunks - r.documents) * active.chunkOverlapTokens;
    const step = target.chunkMaxTokens - target.chunkOverlapTokens;
    chunks = r.documents + Math.max(0, Math.ceil((textTokens - r.documents * target.chunkMaxTokens) / step));
    tokens = textTokens + Math.max(0, chunks - r.documents) * target.chunkOverlapTokens;
  }
  const synchronous = costUsd(target.embedModel, tokens);
  return {
    active,
    target,
    documents: r.documents,
    rechunk: !stored,
    chunks,
    tokens,
    estimated: !stored,
    costUsd: { synchronous, batch: synchronous * BATCH_PRICE_FACTOR },
  };
}

/** The partial HNSW index that holds the profile's vectors and nothing else. */
function profileIndexName(profileId: string): string {
  return `document_chunks_hnsw_p_${profileId.replace(/[^a-z0-9_]/g, "_")}`;
}

/**
 * Begin (or resume) filling `target`: record it as the target, give it its own HNSW index, and
 * queue one bulk-lane job per complete document. Idempotent: a second start queues only what is
 * missing. Returns the plan and how many jobs this call queued.
 */
export async function startMigration(pool: pg.Pool, target: NewProfile): Promise<{ plan: MigrationPlan; queued: number }> {
  const plan = await planMigration(pool, target);
  await withTransaction(pool, async (client) => {
    // Waits for uploads finishing right now; any finishing after this commits queues itself.
    await lockActiveProfile(client, "update");
    const { rows } = await client.query<Profile>(`SELECT ${PROFILE_COLUMNS} FROM upload_pipeline.embedding_profiles`);
    const refused = refusal(target, rows);
    if (refused) throw new MigrationRefused(refused.code, refused.message);
    await client.query(
      `INSERT INTO upload_pipeline.embedding_profiles
         (profile_id, chunker_name, chunker_version, chunk_max_tokens, chunk_overlap_tokens, embed_model, embed_dimensions, embed_version, role)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'target') ON CONFLICT (profile_id) DO NOTHING`,
      [
        target.profileId,
        target.chunkerName,
        target.chunkerVersion,
        target.chunkMaxTokens,
        target.chunkOverlapTokens,
        target.embedModel,
        target.embedDimensions,
        target.embedVersion,
      ],
    );
    if (await hasVectorTable(client)) {
      const kind = target.embedDimensions > 2000 ? "halfvec" : "vector";
      await client.query(
        `CREATE INDEX IF NOT EXISTS ${profileIndexName(target.profileId)} ON upload_pipeline.document_chunks
           USING hnsw ((embedding::${kind}(${target.embedDimensions})) ${kind}_cosine_ops)
           WHERE profile_id = ${literal(target.profileId)} AND embed_model = ${literal(target.embedModel)} AND vector_dims(embedding) = ${target.embedDimensions}`,
      );
    }
  });
  return { plan, queued: await queueMissing(pool, target) };
}

/** Queue a job for every complete document that has none in `target` (in pages of 500). */
async function queueMissing(pool: pg.Pool, target: NewProfile): Promise<number> {
  let queued = 0;
  for (let after = "00000000-0000-0000-0000-000000000000"; ; ) {
    const { rows } = await pool.query<{ document_id: string }>(
      `SELECT j.document_id FROM upload_pipeline.upload_jobs j
        WHERE j.profile_id IS NULL AND j.status = 'complete' AND j.document_id > $2
          AND NOT EXISTS (SELECT 1 FROM upload_pipeline.upload_jobs t WHERE t.profile_id = $1 AND t.document_id = j.document_id)
        ORDER BY j.document_id LIMIT 500`,
      [target.profileId, after],
    );
    for (const row of rows) if (await enqueueProfileJob(pool, row.document_id, target, "operator")) queued += 1;
    if (rows.length < 500) return queued;
    after = rows.at(-1)!.document_id;
  }
}

export interface MigrationStatus {
  active: Profile;
  target: Profile | undefined;
  /** Documents complete in the upload's profile (what the target must hold). */
  documents: number;
  /** Migration jobs of the target by state. */
  jobs: Record<string, number>;
  /** Complete documents without a job in the target yet (uploads finishing right now). */
  missing: number;
  complete: number;
  tokens: number;
  costUsd: number;
}

export async function migrationStatus(db: Pick<pg.Pool, "query">): Promise<MigrationStatus> {
  const { active, profiles } = await requireActive(db);
  const target = profiles.find((p) => p.role === "target");
  const { rows } = await db.query<{ documents: number; missing: number }>(
    `SELECT count(*)::int AS documents,
            count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM upload_pipeline.upload_jobs t WHERE t.profile_id = $1 AND t.document_id = j.document_id))::int AS missing
       FROM upload_pipeline.upload_jobs j WHERE j.profile_id IS NULL AND j.status = 'complete'`,
    [target?.profileId ?? null],
  );
  const jobs = await db.query<{ status: string; n: number; tokens: string; cost: string }>(
    `SELECT status, count(*)::int AS n, coalesce(sum((progress->>'tokens')::bigint), 0) AS tokens,
            coalesce(sum((progress->>'cost_usd')::numeric), 0) AS cost
       FROM upload_pipeline.upload_jobs WHERE profile_id = $1 GROUP BY status ORDER BY status`,
    [target?.profileId ?? null],
  );
  return {
    active,
    target,
    documents: rows[0]!.documents,
    jobs: Object.fromEntries(jobs.rows.map((r) => [r.status, r.n])),
    missing: target ? rows[0]!.missing : 0,
    complete: jobs.rows.find((r) => r.status === "complete")?.n ?? 0,
    tokens: jobs.rows.reduce((s, r) => s + Number(r.tokens), 0),
    costUsd: jobs.rows.reduce((s, r) => s + Number(r.cost), 0),
  };
}

/**
 * Make the target the active profile, in one transaction: match_chunks and GET /jobs read the
 * active role, so both switch at its commit. Refused while a document lacks its complete target
 * job (queued ones first: a start that raced an upload), unless `force`.
 */
export async function cutover(pool: pg.Pool, options: { force?: boolean } = {}): Promise<{ from: string; to: string; incomplete: number }> {
  return withTransaction(pool, async (client) => {
    await lockActiveProfile(client, "update");
    const status = await migrationStatus(client);
    if (!status.target) throw new MigrationRefused("no_migration", "no migration in progress: npm run migrate-model -- start --to … begins one");
    const incomplete = status.documents - status.complete;
    if (incomplete > 0 && !options.force) {
      throw new MigrationRefused(
        "target_incomplete",
        `profile ${status.target.profileId} holds ${status.complete} of ${status.documents} documents (jobs: ${JSON.stringify(status.jobs)}, not queued: ${status.missing}); wait (status), or cut over with --force`,
      );
    }
    await client.query("UPDATE upload_pipeline.embedding_profiles SET role = 'retired' WHERE role = 'active'");
    await client.query("UPDATE upload_pipeline.embedding_profiles SET role = 'active', activated_at = now() WHERE profile_id = $1", [status.target.profileId]);
    return { from: status.active.profileId, to: status.target.profileId, incomplete: Math.max(0, incomplete) };
  });
}

/**
 * Drop the target: its jobs (and their events), its index, its rows in document_chunks, and the
 * vectors and chunks only it used. The active profile's rows are never touched.
 */
export async function abortMigration(pool: pg.Pool): Promise<{ profile: string; jobs: number; vectors: number; chunks: number }> {
  return withTransaction(pool, async (client) => {
    await lockActiveProfile(client, "update");
    const { profiles } = await requireActive(client);
    const target = profiles.find((p) => p.role === "target");
    if (!target) throw new MigrationRefused("no_migration", "no migration in progress: there is nothing to abort");
    const others = profiles.filter((p) => p.profileId !== target.profileId);
    if (await hasVectorTable(client)) {
      await client.query(`DROP INDEX IF EXISTS upload_pipeline.${profileIndexName(target.profileId)}`);
      await client.query("DELETE FROM upload_pipeline.document_chunks WHERE profile_id = $1", [target.profileId]);
    }
    const sharesChunker = others.some((p) => p.chunkerName === target.chunkerName && p.chunkerVersion === target.chunkerVersion);
    const sharesVectors =
      sharesChunker &&
      others.some(
        (p) =>
          p.chunkerName === target.chunkerName &&
          p.chunkerVersion === target.chunkerVersion &&
          p.embedModel === target.embedModel &&
          p.embedVersion === target.embedVersion,
      );
    let vectors = 0;
    let chunks = 0;
    if (!sharesVectors) {
      const v = await client.query(
        `DELETE FROM upload_pipeline.document_vector_buffer v USING upload_pipeline.document_chunk_buffer c
          WHERE v.chunk_id = c.chunk_id AND c.chunker_name = $1 AND c.chunker_version = $2 AND v.embed_model = $3 AND v.embed_version = $4`,
        [target.chunkerName, target.chunkerVersion, target.embedModel, target.embedVersion],
      );
      vectors = v.rowCount ?? 0;
    }
    if (!sharesChunker) {
      const c = await client.query("DELETE FROM upload_pipeline.document_chunk_buffer WHERE chunker_name = $1 AND chunker_version = $2", [
        target.chunkerName,
        target.chunkerVersion,
      ]);
      chunks = c.rowCount ?? 0;
    }
    // The profile's jobs go with it (ON DELETE CASCADE), and their events with them.
    const jobs = await client.query("SELECT count(*)::int AS n FROM upload_pipeline.upload_jobs WHERE profile_id = $1", [target.profileId]);
    await client.query("DELETE FROM upload_pipeline.embedding_profiles WHERE profile_id = $1", [target.profileId]);
    return { profile: target.profileId, jobs: jobs.rows[0]!.n as number, vectors, chunks };
  });
}

async function hasVectorTable(db: Pick<pg.Pool, "query">): Promise<boolean> {
  const { rows } = await db.query<{ exists: boolean }>("SELECT to_regclass('upload_pipeline.document_chunks') IS NOT NULL AS exists");
  return rows[0]!.exists;
}

/** A SQL string literal (profile ids and model names are validated, but quote them anyway). */
function literal(s: string): string {
  return `'${s.replaceAll("'", "''")}'`;
}
