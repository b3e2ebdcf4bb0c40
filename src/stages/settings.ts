/**
 * The settings a job's output depends on, pinned on the job (`upload_jobs.settings`, migration
 * 0004) by the first stage that needs them and read from there ever after. A worker deployed with
 * other CHUNK_* or EMBED_* values resumes an old job with the values it began with, so its chunks
 * still match their ids and its vectors their model and version. What a new upload pins is the
 * active embedding profile (src/profiles/): derived from the configuration at the first start,
 * changed afterwards only by `npm run migrate-model -- cutover`. A migration's jobs are created
 * with their target profile pinned.
 */
import { z } from "zod";
import { CHUNKER_NAME, CHUNKER_VERSION } from "../chunking/markdownChunker.ts";
import { LeaseLostError } from "../errors.ts";
import { activeProfile, DEFAULT_PROFILE_ID, embedVersionOf, MODEL_DIMENSIONS, type Profile } from "../profiles/profiles.ts";
import type { StageContext } from "../worker/stage.ts";
import type { PipelineServices } from "./services.ts";

/**
 * Jobs pinned before profiles (migration 0011) carry only the first four keys: they belong to the
 * `default` profile and this code's chunker.
 */
const Pinned = z.object({
  chunk_max_tokens: z.number().int(),
  chunk_overlap_tokens: z.number().int(),
  embed_model: z.string(),
  embed_dimensions: z.number().int().nullable(),
  profile_id: z.string().optional(),
  chunker_name: z.string().optional(),
  chunker_version: z.string().optional(),
  embed_version: z.string().optional(),
});
export type Pinned = z.infer<typeof Pinned>;

/** A job's profile, its dimensions `undefined` where the model's native width is pinned. */
export type JobSettings = Omit<Profile, "role" | "embedDimensions"> & { embedDimensions: number | undefined };

/** This job's settings: pinned ones, or the active profile's, pinned now (fenced; the first pin wins). */
export async function jobSettings(ctx: StageContext<PipelineServices>): Promise<JobSettings> {
  const parsed = Pinned.safeParse(ctx.job.settings);
  if (parsed.success) return fromPinned(parsed.data);
  const own = pinnedOf(await activeProfile(ctx.pool, ctx.services.settings));
  const { rows } = await ctx.pool.query<{ settings: unknown }>(
    `UPDATE upload_pipeline.upload_jobs SET settings = coalesce(settings, $3::jsonb)
      WHERE job_id = $1 AND lease_token = $2 RETURNING settings`,
    [ctx.job.job_id, ctx.job.lease_token, JSON.stringify(own)],
  );
  if (!rows[0]) throw new LeaseLostError(ctx.job.job_id);
  return fromPinned(Pinned.parse(rows[0].settings));
}

/**
 * A profile as the settings pinned on a job. The model's native width is pinned as `null` (the
 * request leaves `dimensions` out): text-embedding-ada-002 refuses the parameter, and for the
 * -3 models the native width is what they return without it.
 */
export function pinnedOf(p: Omit<Profile, "role">): Pinned {
  return {
    profile_id: p.profileId,
    chunker_name: p.chunkerName,
    chunker_version: p.chunkerVersion,
    chunk_max_tokens: p.chunkMaxTokens,
    chunk_overlap_tokens: p.chunkOverlapTokens,
    embed_model: p.embedModel,
    embed_dimensions: MODEL_DIMENSIONS[p.embedModel as keyof typeof MODEL_DIMENSIONS] === p.embedDimensions ? null : p.embedDimensions,
    embed_version: p.embedVersion,
  };
}

function fromPinned(p: Pinned): JobSettings {
  const embedDimensions = p.embed_dimensions ?? undefined;
  return {
    profileId: p.profile_id ?? DEFAULT_PROFILE_ID,
    chunkerName: p.chunker_name ?? CHUNKER_NAME,
    chunkerVersion: p.chunker_version ?? CHUNKER_VERSION,
    chunkMaxTokens: p.chunk_max_tokens,
    chunkOverlapTokens: p.chunk_overlap_tokens,
    embedModel: p.embed_model,
    embedDimensions,
    embedVersion: p.embed_version ?? embedVersionOf(p.embed_model, embedDimensions),
  };
}
