/**
 * A model migration's jobs: one per document and target profile, a second `upload_jobs` row
 * (`profile_id` set) in the bulk lane, so re-embedding runs through the same stages, leases,
 * fencing, retries and fleet governor as an upload, behind interactive work.
 */
import { CHUNKER_NAME, CHUNKER_VERSION } from "../chunking/markdownChunker.ts";
import { deterministicId } from "../ids.ts";
import { pinnedOf } from "../stages/settings.ts";
import type { Actor } from "../state-machine/table.ts";
import { createJob, type Queryable } from "../state-machine/transition.ts";
import { PROFILE_COLUMNS, type Profile } from "./profiles.ts";

/** The job that fills `profileId` for one document. */
export function profileJobId(documentId: string, profileId: string): string {
  return deterministicId(documentId, "job", profileId);
}

/**
 * What a document's migration job inherits from its upload's job, and whether the profile's
 * chunks are already stored: some complete job of the document chunked with the same chunker
 * (name, version). Then the job starts at `chunks_stored` and only embeds; otherwise it chunks.
 */
const PROFILE_JOB_SOURCE = `
  SELECT j.correlation_id, j.max_attempts, j.tenant_id,
         (SELECT count(*)::int FROM upload_pipeline.document_chunk_buffer c
           WHERE c.document_id = $1 AND c.chunker_name = $2 AND c.chunker_version = $3) AS chunks,
         EXISTS (SELECT 1 FROM upload_pipeline.upload_jobs k
                  WHERE k.document_id = $1 AND k.status = 'complete'
                    AND coalesce(k.settings->>'chunker_name', $4) = $2
                    AND coalesce(k.settings->>'chunker_version', $5) = $3) AS chunked
    FROM upload_pipeline.upload_jobs j
   WHERE j.document_id = $1 AND j.profile_id IS NULL`;

/** Queue the job that fills `profile` for the document (idempotent). Returns whether it was created. */
export async function enqueueProfileJob(db: Queryable, documentId: string, profile: Omit<Profile, "role">, actor: Actor): Promise<boolean> {
  const { rows } = await db.query<{ correlation_id: string; max_attempts: number; tenant_id: string; chunks: number; chunked: boolean }>(PROFILE_JOB_SOURCE, [
    documentId,
    profile.chunkerName,
    profile.chunkerVersion,
    CHUNKER_NAME,
    CHUNKER_VERSION,
  ]);
  const source = rows[0];
  if (!source) return false;
  const chunked = source.chunked && source.chunks > 0;
  const { created } = await createJob(db, {
    jobId: profileJobId(documentId, profile.profileId),
    documentId,
    correlationId: source.correlation_id,
    maxAttempts: source.max_attempts,
    lane: "bulk",
    tenantId: source.tenant_id,
    profile: {
      profileId: profile.profileId,
      status: chunked ? "chunks_stored" : "parse_validated",
      actor,
      settings: pinnedOf(profile),
      progress: chunked ? { chunks_total: source.chunks, chunks_done: source.chunks, vectors_total: source.chunks } : {},
    },
  });
  return created;
}

/**
 * Hold the active profile's row for the rest of the transaction: a finishing upload takes it
 * shared, `migrate-model start`, `cutover` and `abort` exclusively. A start therefore waits for
 * the uploads finishing right now (its listing then sees them complete), and an upload finishing
 * after the start reads the new target: none falls between the two.
 */
export async function lockActiveProfile(db: Queryable, mode: "share" | "update"): Promise<void> {
  await db.query(`SELECT 1 FROM upload_pipeline.embedding_profiles WHERE role = 'active' FOR ${mode === "share" ? "SHARE" : "UPDATE"}`);
}

/**
 * An upload finishing in profile `pinnedProfileId` queues its document for every other profile
 * that serves or is being filled (a migration's target, or the new active one after a cutover),
 * so nothing uploaded during a migration is left out of either profile. Migration jobs queue
 * nothing. Runs inside the finish stage's fenced transaction.
 */
export async function enqueueForOtherProfiles(db: Queryable, jobId: string, documentId: string, pinnedProfileId: string): Promise<number> {
  const { rows: own } = await db.query<{ profile_id: string | null }>("SELECT profile_id FROM upload_pipeline.upload_jobs WHERE job_id = $1", [jobId]);
  if (own[0]?.profile_id !== null) return 0;
  await lockActiveProfile(db, "share");
  const { rows } = await db.query<Profile>(
    `SELECT ${PROFILE_COLUMNS} FROM upload_pipeline.embedding_profiles WHERE role IN ('active', 'target') AND profile_id <> $1`,
    [pinnedProfileId],
  );
  let queued = 0;
  for (const profile of rows) if (await enqueueProfileJob(db, documentId, profile, "worker")) queued += 1;
  return queued;
}
