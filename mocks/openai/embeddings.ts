/**
 * The OpenAI embeddings model, minus the model: which models exist, how inputs are tokenized
 * and counted, and the deterministic unit vector each input maps to.
 */
import { createHash } from "node:crypto";
import { decode, encode, vocabularySize } from "gpt-tokenizer/encoding/cl100k_base";
import { gaussian, rngFromDigest } from "../shared/rng.ts";

/** The embedding models the mock serves, with their native sizes. */
export const EMBEDDING_MODELS: Readonly<Record<string, { nativeDimensions: number; supportsDimensions: boolean }>> = {
  "text-embedding-3-small": { nativeDimensions: 1536, supportsDimensions: true },
  "text-embedding-3-large": { nativeDimensions: 3072, supportsDimensions: true },
  "text-embedding-ada-002": { nativeDimensions: 1536, supportsDimensions: false },
};

/** The API's limits (SPEC §7). */
export const LIMITS = { maxInputs: 2048, maxTokensPerInput: 8192, maxTokensPerRequest: 300_000 } as const;

const noSpecial = { disallowedSpecial: new Set<string>() };

/**
 * Tokens of `text` as text-embedding-3-* and ada-002 count them (cl100k_base); special-token
 * strings such as `<|endoftext|>` count as plain text, as the API treats them.
 */
export function tokenize(text: string): number[] {
  return encode(text, noSpecial);
}

/** Number of tokens the API bills for one input (a string or an array of token ids). */
export function countInputTokens(input: string | readonly number[]): number {
  return typeof input === "string" ? tokenize(input).length : input.length;
}

/** True when every id is a token of cl100k_base that decodes. */
export function validTokenIds(tokens: readonly number[]): boolean {
  return tokens.every((t) => Number.isInteger(t) && t >= 0 && t < vocabularySize && t < 100256);
}

/**
 * The text an input stands for: a string is itself; token ids are decoded, so `"hello"` and
 * `[15339]` embed identically.
 */
export function inputText(input: string | readonly number[]): string {
  return typeof input === "string" ? input : decode([...input]);
}

/**
 * The vector the mock returns for `input` (float32 values, unit length): a Gaussian vector of the
 * model's native size seeded from SHA-256(model, text), cut to `dimensions` and renormalized —
 * shortened vectors are prefixes of the full one, as with the real text-embedding-3 models.
 *
 * @param model an entry of {@link EMBEDDING_MODELS}
 * @param input a string or an array of cl100k_base token ids
 * @param dimensions defaults to the model's native size (1536 small, 3072 large)
 * @throws {Error} for an unknown model or a size the model does not offer
 * @example
 * const v = expectedEmbedding("text-embedding-3-small", "hello", 256); // v.length === 256
 */
export function expectedEmbedding(model: string, input: string | readonly number[], dimensions?: number): number[] {
  const spec = EMBEDDING_MODELS[model];
  if (!spec) throw new Error(`expectedEmbedding: unknown model ${JSON.stringify(model)}`);
  const size = dimensions ?? spec.nativeDimensions;
  if (!Number.isInteger(size) || size < 1 || size > spec.nativeDimensions) {
    throw new Error(`expectedEmbedding: dimensions must be an integer in 1..${spec.nativeDimensions} for ${model}`);
  }
  if (size !== spec.nativeDimensions && !spec.supportsDimensions) {
    throw new Error(`expectedEmbedding: ${model} does not support dimensions`);
  }
  const digest = createHash("sha256").update(model).update("\u0000").update(inputText(input)).digest();
  const rng = rngFromDigest(digest);
  const raw = new Float64Array(size);
  let norm = 0;
  for (let i = 0; i < size; i++) {
    const v = gaussian(rng);
    raw[i] = v;
    norm += v * v;
  }
  norm = Math.sqrt(norm);
  return Array.from(Float32Array.from(raw, (v) => v / norm));
}

/** A vector as the API's `base64` encoding: little-endian float32 bytes, base64. */
export function toBase64Float32(vector: readonly number[]): string {
  const buf = Buffer.alloc(vector.length * 4);
  vector.forEach((v, i) => {
    buf.writeFloatLE(v, i * 4);
  });
  return buf.toString("base64");
}
