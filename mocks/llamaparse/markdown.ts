/**
 * What LlamaParse "parses" a file into, deterministically: markdown and plain-text files come
 * back as themselves; any other file becomes a stable synthetic markdown document (headings and
 * paragraphs) sized from its bytes and seeded from its SHA-256, split into pages.
 */
import { createHash } from "node:crypto";
import { mulberry32, type Rng } from "../shared/rng.ts";

/** A file containing this marker fails to parse (the pipeline's dead-letter scenarios use it). */
export const POISON_MARKER = "%%POISON%%";

/** Synthetic markdown characters per input byte (binary formats carry far less text than bytes). */
export const SYNTHETIC_CHARS_PER_BYTE = 0.25;
/** Target characters of synthetic markdown per page. */
export const SYNTHETIC_PAGE_CHARS = 3_000;
const MIN_SYNTHETIC_CHARS = 400;

const TEXT_MIMES = new Set(["text/markdown", "text/x-markdown", "text/plain"]);
const TEXT_EXTENSIONS = /\.(md|markdown|txt|text)$/i;

/** True when the file is returned as itself (markdown or plain text, by MIME type or extension). */
export function isTextual(filename: string, mime: string): boolean {
  const base = mime.split(";")[0]?.trim().toLowerCase() ?? "";
  return TEXT_MIMES.has(base) || ((base === "" || base === "application/octet-stream") && TEXT_EXTENSIONS.test(filename));
}

/** True when `bytes` contain {@link POISON_MARKER}. */
export function containsPoison(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).includes(POISON_MARKER);
}

const WORDS = (
  "data pipeline document ingestion chunk vector embedding storage worker queue lease retry " +
  "backoff signal state machine transition event audit record table index query latency " +
  "throughput batch token model result report section figure analysis summary method review " +
  "policy contract invoice account revenue quarter growth margin customer market product " +
  "service network security compliance control risk incident response recovery backup region " +
  "cluster replica partition schedule budget forecast estimate measure sample value metric " +
  "the a of and to in for with on by from as is are was be this that which it its their"
).split(" ");

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(rng() * items.length)]!;
}

function sentence(rng: Rng): string {
  const n = 6 + Math.floor(rng() * 10);
  const words = Array.from({ length: n }, () => pick(rng, WORDS));
  const first = words[0]!;
  words[0] = first.charAt(0).toUpperCase() + first.slice(1);
  return `${words.join(" ")}.`;
}

function title(rng: Rng): string {
  return Array.from({ length: 2 + Math.floor(rng() * 3) }, () => {
    const w = pick(rng, WORDS);
    return w.charAt(0).toUpperCase() + w.slice(1);
  }).join(" ");
}

/** The synthetic pages for a non-text file. */
export function syntheticPages(bytes: Uint8Array): string[] {
  const digest = createHash("sha256").update(bytes).digest();
  const rng = mulberry32(digest.readUInt32LE(0));
  const target = Math.max(MIN_SYNTHETIC_CHARS, Math.round(bytes.byteLength * SYNTHETIC_CHARS_PER_BYTE));
  const pageCount = Math.max(1, Math.ceil(target / SYNTHETIC_PAGE_CHARS));
  const perPage = Math.ceil(target / pageCount);
  const pages: string[] = [];
  for (let p = 1; p <= pageCount; p++) {
    const parts: string[] = [p === 1 ? `# ${title(rng)}` : `## ${title(rng)}`];
    let size = parts[0]!.length;
    let section = 0;
    while (size < perPage) {
      if (section > 0 && rng() < 0.3) {
        const heading = `### ${p}.${section} ${title(rng)}`;
        parts.push(heading);
        size += heading.length + 2;
      }
      const paragraph = Array.from({ length: 2 + Math.floor(rng() * 4) }, () => sentence(rng)).join(" ");
      parts.push(paragraph);
      size += paragraph.length + 2;
      section++;
    }
    pages.push(parts.join("\n\n"));
  }
  return pages;
}

/**
 * The pages LlamaParse returns for a file. Text files are one page holding the file itself (or
 * one page per form feed `\f`, as text exported from paged sources carries).
 * @example parsedPages(Buffer.from("# Hi"), "a.md", "text/markdown") // ["# Hi"]
 */
export function parsedPages(bytes: Uint8Array, filename: string, mime: string): string[] {
  if (isTextual(filename, mime)) {
    const text = new TextDecoder().decode(bytes);
    return text.includes("\f") ? text.split("\f") : [text];
  }
  return syntheticPages(bytes);
}

/** `markdown_full`: the pages joined as LlamaParse joins them. */
export function joinPages(pages: readonly string[]): string {
  return pages.join("\n\n");
}

/** The plain-text rendering of a markdown page (`expand=text`). */
export function plainText(markdown: string): string {
  return markdown.replace(/^#{1,6}\s+/gm, "").replace(/\*\*|__|`/g, "");
}
