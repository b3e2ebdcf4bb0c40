/**
 * Seeded randomness for the mocks. Every random choice a mock makes (fault draws, latencies,
 * job timings, ids) comes from a small PRNG keyed by the run's seed plus a stable key such as
 * `route + request counter`, so the same seed and the same requests replay the same answers.
 */
import { createHash } from "node:crypto";

/** A source of floats in [0, 1). */
export type Rng = () => number;

/**
 * mulberry32: a 32-bit PRNG, tiny and fast, good enough for fault draws (not for crypto).
 * @example const rng = mulberry32(42); rng(); // 0.6011037519201636
 */
export function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * sfc32 seeded from the first 128 bits of a digest: a PRNG whose stream depends on all of them,
 * so two different texts share a stream with probability ~2^-128 (a 32-bit seed collides at
 * ~1 % for 10k texts, ~69 % for 100k, and the vector invariant could not tell).
 */
export function rngFromDigest(digest: Uint8Array): Rng {
  if (digest.length < 16) throw new Error("rngFromDigest: needs at least 16 bytes");
  const view = new DataView(digest.buffer, digest.byteOffset, digest.byteLength);
  let a = view.getUint32(0, true);
  let b = view.getUint32(4, true);
  let c = view.getUint32(8, true);
  let d = view.getUint32(12, true);
  const next = () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 12; i++) next(); // mix the seed words before the first draw
  return next;
}

/** FNV-1a over the UTF-16 code units of `text`, then murmur3's finalizer to spread the bits. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * A PRNG for one decision point: `seed` is the run's seed, `parts` name the decision
 * (e.g. `["openai.embeddings", 17]` for the 17th embeddings request).
 */
export function rngFor(seed: number, ...parts: Array<string | number>): Rng {
  return mulberry32(hash32(`${seed}\u0000${parts.join("\u0000")}`));
}

/** A standard normal draw (Box–Muller) from `rng`. */
export function gaussian(rng: Rng): number {
  let u = rng();
  while (u <= Number.EPSILON) u = rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** A deterministic RFC 4122-shaped (version 4 layout) UUID from the given parts. */
export function seededUuid(seed: number, ...parts: Array<string | number>): string {
  const hex = createHash("sha256")
    .update(`${seed}\u0000${parts.join("\u0000")}`)
    .digest("hex");
  const variant = ((parseInt(hex[16] ?? "0", 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/** SHA-256 hex of bytes or text. */
export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}
