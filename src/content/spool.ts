/**
 * Untrusted bytes to a private temporary file, never whole in memory: counted and hashed chunk
 * by chunk, stopped as soon as they pass a size cap. The API spools uploads this way (direct
 * upload, finalize) and the submit stage spools the raw file on its way to LlamaParse.
 */
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";

export interface Spooled {
  bytes: number;
  /** SHA-256 of the bytes, lowercase hex. */
  sha256: string;
}

/**
 * Run `fn` with a fresh private directory, deleted (with whatever `fn` left in it) when `fn`
 * settles.
 */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "upload-pipeline-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Write `source` to `file`, hashing as it goes. A chunk that takes the total past `maxBytes`
 * throws `tooLarge()` before it is written, and the source is not read further.
 *
 * @example
 * const { bytes, sha256 } = await spoolToFile(stream, join(dir, "raw"), 50 << 20, () => new TooLarge());
 */
export async function spoolToFile(
  source: ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>,
  file: string,
  maxBytes: number,
  tooLarge: () => Error,
  signal?: AbortSignal,
): Promise<Spooled> {
  const hash = createHash("sha256");
  let bytes = 0;
  const input = source instanceof ReadableStream ? Readable.fromWeb(source as WebReadableStream<Uint8Array>) : source;
  await pipeline(
    input,
    async function* (chunks: AsyncIterable<Uint8Array>) {
      for await (const chunk of chunks) {
        bytes += chunk.byteLength;
        if (bytes > maxBytes) throw tooLarge();
        hash.update(chunk);
        yield chunk;
      }
    },
    createWriteStream(file),
    signal ? { signal } : {},
  );
  return { bytes, sha256: hash.digest("hex") };
}
