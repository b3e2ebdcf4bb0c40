import { describe, expect, test } from "vitest";
import { chunkMarkdown, type ChunkerStats, READ_SLICE_UNITS } from "../../src/chunking/markdownChunker.ts";

/**
 * A deterministic markdown document of about `totalChars`, produced lazily in ~64 KiB pieces
 * so the test itself never holds it: sections, subsections, paragraphs, lists and code fences.
 */
async function* generatedDoc(totalChars: number): AsyncGenerator<string> {
  const words = ["ingest", "vector", "lease", "batch", "token", "worker", "parse", "chunk", "state", "retry", "fence", "queue"];
  let produced = 0;
  let n = 0;
  let piece = "";
  const word = () => words[(n++ * 7 + (n >> 3)) % words.length]!;
  while (produced < totalChars) {
    const k = n;
    if (k % 97 === 0) piece += `## Section ${k}\n\n`;
    else if (k % 31 === 0) piece += `### Part ${k}\n\n`;
    if (k % 13 === 0) {
      piece += "```ts\n";
      for (let i = 0; i < 8 + (k % 11); i++) piece += `const ${word()}${i} = ${word()}(${i});\n`;
      piece += "```\n\n";
    } else if (k % 7 === 0) {
      for (let i = 0; i < 5; i++) piece += `- ${word()} ${word()} ${word()}\n`;
      piece += "\n";
    } else {
      const sentencesInPara = 3 + (k % 9);
      for (let s = 0; s < sentencesInPara; s++) {
        const len = 5 + ((k + s) % 14);
        piece += `${Array.from({ length: len }, word).join(" ")}. `;
      }
      piece += "\n\n";
    }
    n++;
    if (piece.length >= 65_536) {
      produced += piece.length;
      yield piece;
      piece = "";
    }
  }
  if (piece) yield piece;
}

async function run(source: AsyncIterable<string>, maxTokens = 512, overlapTokens = 64) {
  let stats: ChunkerStats = { bufferedChars: 0, maxBufferedChars: 0 };
  let chunks = 0;
  let maxTokenCount = 0;
  let lastOrd = -1;
  let lastStart = 0;
  for await (const c of chunkMarkdown(source, { maxTokens, overlapTokens, onStats: (s) => (stats = s) })) {
    expect(c.ord).toBe(lastOrd + 1);
    expect(c.meta.charStart).toBeGreaterThanOrEqual(lastStart);
    lastOrd = c.ord;
    lastStart = c.meta.charStart;
    maxTokenCount = Math.max(maxTokenCount, c.tokenCount);
    chunks++;
  }
  return { chunks, maxTokenCount, maxBufferedChars: stats.maxBufferedChars };
}

describe("chunkMarkdown: bounded memory", () => {
  // Buffered text is bounded by a constant (about one chunk of text plus one read slice), independent of document size.
  test("a 5 MB document streams through with the same buffer bound as a 250 KB one", async () => {
    const small = await run(generatedDoc(250_000));
    const large = await run(generatedDoc(5_000_000));
    expect(large.chunks).toBeGreaterThan(15 * small.chunks);
    expect(large.maxTokenCount).toBeLessThanOrEqual(512);
    // 512 + 64 tokens of English is ~2.5k units; a read slice is 4k. 16k leaves room, and is
    // 300× smaller than the document.
    expect(large.maxBufferedChars).toBeLessThanOrEqual(16_384);
    expect(large.maxBufferedChars).toBeLessThanOrEqual(small.maxBufferedChars + READ_SLICE_UNITS);
  }, 60_000);

  // A document that is one enormous line (no newline at all) is bounded too: nothing waits for the end of the line.
  test("a 1 MB single-line document stays bounded", async () => {
    async function* oneLine() {
      for (let i = 0; i < 100; i++) yield "lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(180);
    }
    const result = await run(oneLine(), 256, 32);
    expect(result.chunks).toBeGreaterThan(500);
    expect(result.maxBufferedChars).toBeLessThanOrEqual(16_384);
  }, 60_000);
});
