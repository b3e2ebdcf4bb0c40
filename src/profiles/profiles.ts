/**
 * Embedding profiles (migration 0011): a chunker (name, version, settings) and an embedding
 * (model, dimensions, version). Exactly one is `active` and serves search and GET /jobs; a model
 * migration adds a `target` that is filled side by side. Buffers key by chunker (name, version)
 * and by embedding (model, version), so two profiles share whatever they have in common: a
 * migration that keeps the chunker re-embeds the stored chunks without re-chunking.
 */
import { z } from "zod";
import { CHUNKER_NAME, CHUNKER_VERSION } from "../chunking/markdownChunker.ts";
import type { Queryable } from "../state-machine/transition.ts";

/** Native (largest) output width of each model; -3-* accept any smaller `dimensions`. */
export const MODEL_DIMENSIONS = { "text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536 } as const;
export type EmbedModel = keyof typeof MODEL_DIMENSIONS;
const MODELS = Object.keys(MODEL_DIMENSIONS) as [EmbedModel, ...EmbedModel[]];

/** The profile the first start derives from the configuration (and that rows from before profiles belong to). */
export const DEFAULT_PROFILE_ID = "default";

/** `embed_version`: what, besides the model name, decides the vectors (here the dimensions). */
export function embedVersionOf(model: string, dimensions: number | undefined): string {
  return `d${dimensions ?? MODEL_DIMENSIONS[model as EmbedModel] ?? 0}`;
}

/**
 * A profile as an operator writes it (flags or a JSON file); see `parseProfileSpec`. Chunker
 * fields left out are the active profile's, so a model change is `{id, embedding: {model}}`.
 */
export const ProfileSpec = z
  .object({
    id: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, "must be 1–63 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"),
    chunker: z
      .object({
        name: z.literal(CHUNKER_NAME, { error: `must be ${CHUNKER_NAME} (the only chunker this code has)` }).optional(),
        version: z
          .string()
          .regex(
            new RegExp(`^${CHUNKER_VERSION.replaceAll(".", "\\.")}(\\+[A-Za-z0-9._-]{1,32})?$`),
            `must be ${CHUNKER_VERSION} (this code's chunker) or ${CHUNKER_VERSION}+<label> for other settings`,
          )
          .optional(),
        max_tokens: z.number().int().min(64).max(8191).optional(),
        overlap_tokens: z.number().int().min(0).max(4095).optional(),
      })
      .strict()
      .default({}),
    embedding: z
      .object({
        model: z.enum(MODELS, { error: `must be one of ${MODELS.join(", ")}` }),
        dimensions: z.number().int().min(1).optional(),
        version: z
          .string()
          .regex(/^[A-Za-z0-9._+-]{1,32}$/, "must be 1–32 letters, digits, '.', '_', '+' or '-'")
          .optional(),
      })
      .strict(),
  })
  .strict()
  .superRefine((p, ctx) => {
    const native = MODEL_DIMENSIONS[p.embedding.model];
    const dims = p.embedding.dimensions;
    if (dims !== undefined && dims > native) {
      ctx.addIssue({ code: "custom", path: ["embedding", "dimensions"], message: `must be at most ${native} for ${p.embedding.model}` });
    }
    if (dims !== undefined && dims !== native && p.embedding.model === "text-embedding-ada-002") {
      ctx.addIssue({ code: "custom", path: ["embedding", "dimensions"], message: "text-embedding-ada-002 only embeds at 1536 dimensions" });
    }
  });

/** A profile as stored (one row of `embedding_profiles`). */
export interface Profile {
  profileId: string;
  chunkerName: string;
  chunkerVersion: string;
  chunkMaxTokens: number;
  chunkOverlapTokens: number;
  embedModel: string;
  embedDimensions: number;
  embedVersion: string;
  role: "active" | "target" | "retired";
}

type ChunkerOf = Pick<Profile, "chunkerName" | "chunkerVersion" | "chunkMaxTokens" | "chunkOverlapTokens">;

/**
 * Validate an operator's profile; the errors name every bad field (`embedding.dimensions: …`).
 * Chunker fields left out are `base`'s (the active profile's). Other chunk settings without a
 * version get one of their own (`1.0.0+256-32`): chunks of two settings never share ids.
 */
export function parseProfileSpec(input: unknown, base: ChunkerOf): { ok: true; profile: Omit<Profile, "role"> } | { ok: false; errors: string[] } {
  const parsed = ProfileSpec.safeParse(input);
  if (!parsed.success) {
    return { ok: false, errors: parsed.error.issues.map((i) => `${i.path.join(".") || "profile"}: ${i.message}`) };
  }
  const p = parsed.data;
  const maxTokens = p.chunker.max_tokens ?? base.chunkMaxTokens;
  const overlapTokens = p.chunker.overlap_tokens ?? base.chunkOverlapTokens;
  if (overlapTokens * 2 > maxTokens) return { ok: false, errors: [`chunker.overlap_tokens: must be at most half of chunker.max_tokens (${maxTokens})`] };
  const sameSettings = maxTokens === base.chunkMaxTokens && overlapTokens === base.chunkOverlapTokens;
  const dimensions = p.embedding.dimensions ?? MODEL_DIMENSIONS[p.embedding.model];
  return {
    ok: true,
    profile: {
      profileId: p.id,
      chunkerName: p.chunker.name ?? base.chunkerName,
      chunkerVersion: p.chunker.version ?? (sameSettings ? base.chunkerVersion : `${CHUNKER_VERSION}+${maxTokens}-${overlapTokens}`),
      chunkMaxTokens: maxTokens,
      chunkOverlapTokens: overlapTokens,
      embedModel: p.embedding.model,
      embedDimensions: dimensions,
      embedVersion: p.embedding.version ?? embedVersionOf(p.embedding.model, dimensions),
    },
  };
}

/** What the first start derives from the configuration (EMBED_MODEL, EMBED_DIMENSIONS, CHUNK_*). */
export interface ProfileSettings {
  embedModel: string;
  embedDimensions: number | undefined;
  chunkMaxTokens: number;
  chunkOverlapTokens: number;
}

export function profileFromSettings(s: ProfileSettings): Omit<Profile, "role"> {
  const dimensions = s.embedDimensions ?? MODEL_DIMENSIONS[s.embedModel as EmbedModel] ?? 0;
  return {
    profileId: DEFAULT_PROFILE_ID,
    chunkerName: CHUNKER_NAME,
    chunkerVersion: CHUNKER_VERSION,
    chunkMaxTokens: s.chunkMaxTokens,
    chunkOverlapTokens: s.chunkOverlapTokens,
    embedModel: s.embedModel,
    embedDimensions: dimensions,
    embedVersion: embedVersionOf(s.embedModel, dimensions),
  };
}

export const PROFILE_COLUMNS = `profile_id AS "profileId", chunker_name AS "chunkerName", chunker_version AS "chunkerVersion",
  chunk_max_tokens AS "chunkMaxTokens", chunk_overlap_tokens AS "chunkOverlapTokens", embed_model AS "embedModel",
  embed_dimensions AS "embedDimensions", embed_version AS "embedVersion", role`;

/** Write a profile row in `role`; nothing when its id exists (returns whether it was written). */
export async function insertProfile(db: Queryable, p: Omit<Profile, "role">, role: Profile["role"]): Promise<boolean> {
  const { rowCount } = await db.query(
    `INSERT INTO upload_pipeline.embedding_profiles
       (profile_id, chunker_name, chunker_version, chunk_max_tokens, chunk_overlap_tokens, embed_model, embed_dimensions, embed_version, role, activated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $9 = 'active' THEN now() END)
     ON CONFLICT DO NOTHING`,
    [p.profileId, p.chunkerName, p.chunkerVersion, p.chunkMaxTokens, p.chunkOverlapTokens, p.embedModel, p.embedDimensions, p.embedVersion, role],
  );
  return (rowCount ?? 0) > 0;
}

export async function loadProfiles(db: Queryable): Promise<Profile[]> {
  const { rows } = await db.query<Profile>(`SELECT ${PROFILE_COLUMNS} FROM upload_pipeline.embedding_profiles ORDER BY created_at, profile_id`);
  return rows;
}

export async function loadProfile(db: Queryable, profileId: string): Promise<Profile | undefined> {
  const { rows } = await db.query<Profile>(`SELECT ${PROFILE_COLUMNS} FROM upload_pipeline.embedding_profiles WHERE profile_id = $1`, [profileId]);
  return rows[0];
}

/**
 * The active profile; at the very first start (no profile yet) the one derived from this
 * process's configuration becomes active. Concurrent first starts agree: the unique index on the
 * active role lets one insert win, and everyone reads the winner.
 */
export async function activeProfile(db: Queryable, settings: ProfileSettings): Promise<Profile> {
  const read = async () => (await db.query<Profile>(`SELECT ${PROFILE_COLUMNS} FROM upload_pipeline.embedding_profiles WHERE role = 'active'`)).rows[0];
  const existing = await read();
  if (existing) return existing;
  await insertProfile(db, profileFromSettings(settings), "active");
  const active = await read();
  if (!active) throw new Error("no active embedding profile after writing one: is embedding_profiles being edited by hand?");
  return active;
}

/** Two profiles that share a chunker (name, version) must chunk alike: their chunks share ids. */
export function chunkerConflict(p: Omit<Profile, "role">, others: readonly Profile[]): string | undefined {
  const clash = others.find(
    (o) =>
      o.chunkerName === p.chunkerName &&
      o.chunkerVersion === p.chunkerVersion &&
      (o.chunkMaxTokens !== p.chunkMaxTokens || o.chunkOverlapTokens !== p.chunkOverlapTokens),
  );
  return clash
    ? `chunker.version: profile ${clash.profileId} already uses ${p.chunkerName} ${p.chunkerVersion} with max_tokens ${clash.chunkMaxTokens} and overlap_tokens ${clash.chunkOverlapTokens}; give other settings their own version, e.g. ${CHUNKER_VERSION}+${p.chunkMaxTokens}-${p.chunkOverlapTokens}`
    : undefined;
}
