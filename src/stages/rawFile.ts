/**
 * The raw upload on its way to LlamaParse without holding it in memory: streamed from Storage
 * into a private temporary file (`content/spool.ts`), then handed on as a file-backed Blob
 * (`fs.openAsBlob`), which the SDK's multipart body reads in chunks again. At no point is more
 * than one stream chunk of the file in memory, whatever its size.
 *
 * Two checks ride on the stream, since an object can differ from what the API accepted (a
 * bucket written by something else, a limit lowered since): more than `maxBytes` stops the
 * download at once (`raw_too_large`), and bytes whose SHA-256 is not the document's
 * `file_sha256` are refused (`raw_mismatch`). Both are permanent: retrying reads the same object.
 */
import { openAsBlob } from "node:fs";
import { join } from "node:path";
import { PermanentError } from "../errors.ts";
import type { ObjectStorage } from "../clients/storage.ts";
import { spoolToFile, withTempDir } from "../content/spool.ts";

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
  return withTempDir(async (dir) => {
    const file = join(dir, "raw");
    const tooLarge = () =>
      new PermanentError(
        "raw_too_large",
        `The stored file ${object.path} is larger than the limit of ${object.maxBytes} bytes (UPLOAD_MAX_BYTES); it was not sent to LlamaParse.`,
      );
    const { sha256 } = await spoolToFile(await storage.download(object.path, signal), file, object.maxBytes, tooLarge, signal);
    if (sha256 !== object.sha256) {
      throw new PermanentError(
        "raw_mismatch",
        `The stored file ${object.path} is not the one uploaded (SHA-256 ${sha256}, expected ${object.sha256}); upload it again.`,
      );
    }
    return use(await openAsBlob(file));
  });
}
