/**
 * The settings a job's output depends on, pinned on the job (`upload_jobs.settings`, migration
 * 0004) by the first stage that needs them and read from there ever after. A worker deployed with
 * other CHUNK_* or EMBED_* values resumes an old job with the values it began with, so its chunks
 * still match their ids and its vectors their model and version; new jobs pin the new values.
 */
import { z } from "zod";
import { LeaseLostError } from "../errors.ts";
import type { StageContext } from "../worker/stage.ts";
import type { PipelineServices, PipelineSettings } from "./services.ts";

const Pinned = z.object({
  chunk_max_tokens: z.number().int(),
  chunk_overlap_tokens: z.number().int(),
  embed_model: z.string(),
  embed_dimensions: z.number().int().nullable(),
});
type Pinned = z.infer<typeof Pinned>;

export interface JobSettings {
  chunkMaxTokens: number;
  chunkOverlapTokens: number;
  embedModel: string;
  /** `undefined`: the model's default. */
  embedDimensions: number | undefined;
  embedVersion: string;
}

const DEFAULT_DIMENSIONS: Record<string, number> = { "text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536 };

/** `embed_version`: what, besides the model name, decides the vectors (here the dimensions). */
export function embedVersionOf(model: string, dimensions: number | undefined): string {
  return `d${dimensions ?? DEFAULT_DIMENSIONS[model] ?? 0}`;
}

/** This job's settings: pinned ones, or this worker's, pinned now (fenced; the first pin wins). */
export async function jobSettings(ctx: StageContext<PipelineServices>): Promise<JobSettings> {
  const parsed = Pinned.safeParse(ctx.job.settings);
  if (parsed.success) return fromPinned(parsed.data);
  const own = toPinned(ctx.services.settings);
  const { rows } = await ctx.pool.query<{ settings: unknown }>(
    `UPDATE upload_pipeline.upload_jobs SET settings = coalesce(settings, $3::jsonb)
      WHERE job_id = $1 AND lease_token = $2 RETURNING settings`,
    [ctx.job.job_id, ctx.job.lease_token, JSON.stringify(own)],
  );
  if (!rows[0]) throw new LeaseLostError(ctx.job.job_id);
  return fromPinned(Pinned.parse(rows[0].settings));
}

function toPinned(s: PipelineSettings): Pinned {
  return {
    chunk_max_tokens: s.chunkMaxTokens,
    chunk_overlap_tokens: s.chunkOverlapTokens,
    embed_model: s.embedModel,
    embed_dimensions: s.embedDimensions ?? null,
  };
}

function fromPinned(p: Pinned): JobSettings {
  const embedDimensions = p.embed_dimensions ?? undefined;
  return {
    chunkMaxTokens: p.chunk_max_tokens,
    chunkOverlapTokens: p.chunk_overlap_tokens,
    embedModel: p.embed_model,
    embedDimensions,
    embedVersion: embedVersionOf(p.embed_model, embedDimensions),
  };
}
