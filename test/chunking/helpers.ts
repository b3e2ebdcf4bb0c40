/** Shared helpers for the chunker specs: collecting chunks, document generators, the contract check. */
import fc from "fast-check";
import { expect } from "vitest";
import { countTokens } from "../../src/clients/tokens.ts";
import { type Chunk, chunkMarkdown, type ChunkMarkdownOptions } from "../../src/chunking/markdownChunker.ts";

export const RUNS = Number(process.env.PROP_RUNS) || 40;
/** Per-test timeout that grows with PROP_RUNS for deep runs. */
export const TIMEOUT = Math.max(30_000, RUNS * 60);

export async function chunksOf(
  source: Iterable<string | Uint8Array> | AsyncIterable<string | Uint8Array>,
  options: ChunkMarkdownOptions = {},
): Promise<Chunk[]> {
  const out: Chunk[] = [];
  for await (const chunk of chunkMarkdown(source, options)) out.push(chunk);
  return out;
}

export { fromArray, splitAt } from "../support/streams.ts";

const word = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.constantFrom("the", "quick", "Brown", "fox", "jumps", "over", "lazy", "dog", "über", "naïve", "Cafe\u0301", "co-operate", "1234567", "a"),
  },
  { weight: 2, arbitrary: fc.constantFrom("end.", "really?", "wow!", "(see above).", "“quoted.”", "etc…", "x:") },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      "漢字かな交じり文",
      "😀🎉",
      "<|endoftext|>",
      "https://example.com/a/very/long/path?with=query&and=more",
      "x".repeat(41),
      "a\u0301".repeat(12),
    ),
  },
  { weight: 1, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 30 }).map((s) => s.replace(/\s/g, "") || "z") },
);
const words = (min: number, max: number) => fc.array(word, { minLength: min, maxLength: max }).map((ws) => ws.join(" "));

const heading = fc
  .tuple(fc.integer({ min: 1, max: 6 }), words(1, 6), fc.boolean())
  .map(([level, text, closing]) => `${"#".repeat(level)} ${text}${closing ? " ##" : ""}`);
const paragraph = fc.array(fc.tuple(words(1, 40), fc.constantFrom(" ", "\n", "  \n")), { minLength: 1, maxLength: 8 }).map((ls) =>
  ls
    .map(([l, sep]) => l + sep)
    .join("")
    .trimEnd(),
);
const fence = fc
  .tuple(
    fc.constantFrom("```", "````", "~~~"),
    fc.constantFrom("", "ts", "python"),
    fc.array(fc.oneof(words(0, 12), fc.constant("# not a heading"), fc.constant("")), { maxLength: 30 }),
    fc.boolean(),
  )
  .map(([f, lang, lines, closed]) => [f + lang, ...lines, ...(closed ? [f] : [])].join("\n"));
const list = fc.array(words(1, 12), { minLength: 1, maxLength: 8 }).map((items) => items.map((i) => `- ${i}`).join("\n"));
const pageMark = fc.integer({ min: 1, max: 500 }).map((n) => `<!-- page: ${n} -->`);
const longLine = fc.tuple(word, fc.integer({ min: 50, max: 400 })).map(([w, n]) => Array.from({ length: n }, () => w).join(" "));
const block = fc.oneof(
  { weight: 3, arbitrary: heading },
  { weight: 6, arbitrary: paragraph },
  { weight: 2, arbitrary: fence },
  { weight: 2, arbitrary: list },
  { weight: 1, arbitrary: pageMark },
  { weight: 1, arbitrary: longLine },
);
const separator = fc.constantFrom("\n\n", "\n", "\n\n\n\n", "\r\n\r\n", "\n \t\n", "\n\n   ");

/** A markdown document with headings, paragraphs, fences (some unclosed), lists, page markers and long lines. */
export const markdownDoc = fc
  .tuple(fc.array(fc.tuple(block, separator), { maxLength: 18 }), fc.constantFrom("", "\n", "\uFEFF", "\n\n  "))
  .map(([blocks, lead]) => lead + blocks.map(([b, s]) => b + s).join(""));

export const chunkerOptions = fc
  .integer({ min: 64, max: 200 })
  .chain((maxTokens) => fc.record({ maxTokens: fc.constant(maxTokens), overlapTokens: fc.integer({ min: 0, max: Math.floor(maxTokens / 2) }) }));

/**
 * The chunker's contract (see src/chunking/markdownChunker.ts), checked against the normalized
 * document `norm`. Written out once so each property test can state which part it relies on.
 */
export function expectContract(norm: string, chunks: Chunk[], maxTokens: number, overlapTokens: number): void {
  let prevStart = 0;
  let prevBodyStart = -1;
  let prevEnd = 0;
  let covered = 0; // every non-whitespace char before this offset lies in some body
  chunks.forEach((c, i) => {
    expect(c.ord).toBe(i);
    expect(c.tokenCount).toBe(countTokens(c.text));
    expect(c.tokenCount).toBeGreaterThanOrEqual(1);
    expect(c.tokenCount).toBeLessThanOrEqual(maxTokens);
    expect(c.text).toBe(norm.slice(c.meta.charStart, c.meta.charEnd));
    expect(c.meta.charStart).toBeGreaterThanOrEqual(prevStart);
    const bodyStart = c.meta.charStart + c.meta.overlapChars;
    const body = norm.slice(bodyStart, c.meta.charEnd);
    expect(body.trim()).not.toBe("");
    expect(body).toBe(body.trim());
    // Bodies are disjoint and in order; what lies between them is whitespace.
    expect(bodyStart).toBeGreaterThanOrEqual(prevEnd);
    expect(norm.slice(covered, bodyStart).trim()).toBe("");
    covered = c.meta.charEnd;
    if (c.meta.overlapChars > 0) {
      // The overlap is a proper tail of the previous body, within overlapTokens.
      expect(c.meta.charStart).toBeGreaterThan(prevBodyStart);
      expect(c.meta.charStart).toBeLessThan(prevEnd);
      expect(countTokens(norm.slice(c.meta.charStart, prevEnd))).toBeLessThanOrEqual(overlapTokens);
    }
    expect(c.meta.section).toBe(c.meta.headings.at(-1) ?? "");
    prevStart = c.meta.charStart;
    prevBodyStart = bodyStart;
    prevEnd = c.meta.charEnd;
  });
  expect(norm.slice(covered).trim()).toBe("");
}
