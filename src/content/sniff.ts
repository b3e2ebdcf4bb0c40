/**
 * What a file is, from its bytes rather than its label. Binary formats (PDF, DOCX, ZIP, ELF,
 * images…) by their signatures through `file-type`, which reads as far into the file as a format
 * needs (a DOCX is told from a plain ZIP by its entries); anything without a signature is text
 * when its first 8 KiB are valid UTF-8 without control characters other than whitespace, and
 * HTML when that text opens with a doctype or an `<html>`, `<head>` or `<body>` tag.
 */
import { open } from "node:fs/promises";
import { extname } from "node:path";
import { fileTypeFromFile } from "file-type";

/** Bytes read to tell text from binary. */
const TEXT_PROBE_BYTES = 8192;
// NUL and the C0 controls other than \t \n \v \f \r and ESC: present in binaries, not in text.
// eslint-disable-next-line no-control-regex
const BINARY_CONTROL = /[\u0000-\u0008\u000e-\u001a\u001c-\u001f]/;
const HTML_START = /^\uFEFF?\s*(?:<!--[\s\S]*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b/i;

export const OCTET_STREAM = "application/octet-stream";

/**
 * The MIME type the file's bytes show: a `file-type` match, `text/html`, `text/plain`, or
 * `application/octet-stream` for unrecognised binary content.
 *
 * @example await sniffFile("/tmp/x") // "application/pdf"
 */
export async function sniffFile(path: string): Promise<string> {
  let found: Awaited<ReturnType<typeof fileTypeFromFile>>;
  try {
    found = await fileTypeFromFile(path);
  } catch (err) {
    // A parser tripping over hostile bytes says only that they are no format it knows.
    if (typeof (err as { syscall?: unknown }).syscall === "string") throw err;
    return OCTET_STREAM;
  }
  if (found) return found.mime;
  const handle = await open(path, "r");
  let head: Uint8Array;
  try {
    const buffer = new Uint8Array(TEXT_PROBE_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, TEXT_PROBE_BYTES, 0);
    head = buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
  let text: string;
  try {
    // `stream: true`: a multi-byte character cut by the probe's end is not an error.
    text = new TextDecoder("utf-8", { fatal: true }).decode(head, { stream: true });
  } catch {
    return OCTET_STREAM;
  }
  if (BINARY_CONTROL.test(text)) return OCTET_STREAM;
  return HTML_START.test(text) ? "text/html" : "text/plain";
}

/**
 * Whether bytes that sniff as `found` may carry the label `declared`: the same type, or text
 * under any text label (Markdown has no signature, and HTML is text too).
 */
export function contentMatches(declared: string, found: string): boolean {
  return declared === found || (declared.startsWith("text/") && found.startsWith("text/"));
}

const TEXT_BY_EXTENSION: Record<string, string> = {
  ".md": "text/markdown",
  ".markdown": "text/markdown",
  ".html": "text/html",
  ".htm": "text/html",
  ".txt": "text/plain",
};

/**
 * The type of a file sent without one (or as `application/octet-stream`): what its bytes show,
 * refined by its extension for text, which has no signature (`notes.md` → `text/markdown`).
 */
export function typeOfUnlabelled(filename: string, found: string): string {
  if (!found.startsWith("text/")) return found;
  return TEXT_BY_EXTENSION[extname(filename).toLowerCase()] ?? found;
}
