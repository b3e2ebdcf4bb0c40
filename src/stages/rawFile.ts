/**
 * The raw upload on its way to LlamaParse without holding it in memory: streamed from Storage
 * into a private temporary file, counted and hashed chunk by chunk, then handed on as a
 * file-backed Blob (`fs.openAsBlob`), which the SDK's multipart body reads in chunks again.
 * At no point is more than one stream chunk of the file in memory, whatever its size.
 *
 * Two checks ride on the stream, since an object can differ from what the API accepted (a
 * bucket written by something else, a limit lowered since): more than `maxBytes` stops the
 * download at once (`raw_too_large`), and bytes whose SHA-256 is not the document's
 * `file_sha256` are refused (`raw_mismatch`). Both are permanent: retrying reads the same object.
 */
import { createHash } from "node:crypto";
import { createWriteStream, openAsBlob } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { PermanentError } from "../errors.ts";
import type { ObjectStorage } from "../clients/storage.ts";

export interface RawObject {
  path: string;
  /** The document's `file_sha256`: what the API hashed when it accepted the upload. */
  sha256: string;
  /** The largest object accepted (`UPLOAD_MAX_BYTES`). */
  maxBytes: number;
}

/**
 * Spool `object` to a temporary file and call `use` with it as a Blob; the file is deleted when
 * `use` settles.
 *
 * @example
 * await withRawFile(storage, { path: job.raw_path, sha256: job.file_sha256, maxBytes }, signal,
 *   (file) => llamaparse.submitParse({ file, ... }, signal));
 */
export async function withRawFile<T>(
  storage: Pick<ObjectStorage, "download">,
  object: RawObject,
  signal: AbortSignal | undefined,
  use: (file: Blob) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "upload-pipeline-raw-"));
  try {
    const file = join(dir, "raw");
    const stream = await storage.download(object.path, signal);
    const hash = createHash("sha256");
    let bytes = 0;
    await pipeline(
      Readable.fromWeb(stream as WebReadableStream<Uint8Array>),
      async function* (source: AsyncIterable<Buffer>) {
        for await (const chunk of source) {
          bytes += chunk.length;
          if (bytes > object.maxBytes) {
            throw new PermanentError(
              "raw_too_large",
              `The stored file ${object.path} is larger than the limit of ${object.maxBytes} bytes (UPLOAD_MAX_BYTES); it was not sent to LlamaParse.`,
            );
          }
          hash.update(chunk);
          yield chunk;
        }
      },
      createWriteStream(file),
      signal ? { signal } : {},
    );
    const actual = hash.digest("hex");
    if (actual !== object.sha256) {
      throw new PermanentError(
        "raw_mismatch",
        `The stored file ${object.path} is not the one uploaded (SHA-256 ${actual}, expected ${object.sha256}); upload it again.`,
      );
    }
    return await use(await openAsBlob(file));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
