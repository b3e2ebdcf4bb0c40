import { describe, expect, test } from "vitest";
import { countTokens } from "../../src/clients/tokens.ts";
import { CHUNKER_NAME, CHUNKER_VERSION, ChunkerOptions, chunkMarkdown, pageMarker } from "../../src/chunking/markdownChunker.ts";
import { normalize } from "../../src/text/normalize.ts";
import { chunksOf, expectContract } from "./helpers.ts";

const body = (c: { text: string; meta: { overlapChars: number } }) => c.text.slice(c.meta.overlapChars);

function sentences(n: number, seed = 0): string {
  const words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"];
  return Array.from({ length: n }, (_, i) => {
    const len = 6 + ((i * 7 + seed) % 9);
    const s = Array.from({ length: len }, (_, k) => words[(i * 3 + k * 5 + seed) % words.length]).join(" ");
    return `${s[0]!.toUpperCase()}${s.slice(1)}.`;
  }).join(" ");
}

describe("chunkMarkdown: identity and options", () => {
  test("name and version are exported for chunk ids", () => {
    expect(CHUNKER_NAME).toBe("md-heading-token");
    expect(CHUNKER_VERSION).toMatch(/^\d+\.\d+\.\d+$/);
  });

  test("defaults are 512 / 64 and invalid options are refused", () => {
    expect(ChunkerOptions.parse({})).toEqual({ maxTokens: 512, overlapTokens: 64 });
    expect(() => ChunkerOptions.parse({ maxTokens: 32 })).toThrow();
    expect(() => ChunkerOptions.parse({ maxTokens: 100, overlapTokens: 51 })).toThrow(/at most half/);
    expect(() => ChunkerOptions.parse({ maxTokens: 100.5 })).toThrow();
  });

  test("invalid options fail when iteration starts", async () => {
    await expect(chunksOf(["x"], { maxTokens: 10 })).rejects.toThrow();
  });
});

describe("chunkMarkdown: small documents", () => {
  test("an empty or all-whitespace document gives zero chunks", async () => {
    expect(await chunksOf([])).toEqual([]);
    expect(await chunksOf([""])).toEqual([]);
    expect(await chunksOf([" \n\r\n\t\n\uFEFF"])).toEqual([]);
  });

  test("a tiny document is one chunk: the normalized text without its final newline", async () => {
    expect(await chunksOf(["  Hello,\r\nworld!  \r\n\r\n"])).toEqual([
      {
        ord: 0,
        text: "Hello,\nworld!",
        tokenCount: countTokens("Hello,\nworld!"),
        meta: { headings: [], section: "", charStart: 2, charEnd: 15, overlapChars: 0 },
      },
    ]);
  });

  test("offsets refer to the normalized document (CRLF, NFC, collapsed blank lines)", async () => {
    const raw = "# Cafe\u0301\r\n\r\n\r\n\r\nCre\u0300me bru\u0302le\u0301e.\r\n";
    const norm = normalize(raw);
    expect(norm).toBe("# Café\n\nCrème brûlée.\n");
    const [chunk] = await chunksOf([raw]);
    expect(chunk!.text).toBe("# Café\n\nCrème brûlée.");
    expect(norm.slice(chunk!.meta.charStart, chunk!.meta.charEnd)).toBe(chunk!.text);
    expect(chunk!.meta.headings).toEqual(["Café"]);
  });

  test("special-token text such as <|endoftext|> is ordinary text", async () => {
    const [chunk] = await chunksOf(["before <|endoftext|> after"]);
    expect(chunk!.text).toBe("before <|endoftext|> after");
  });
});

describe("chunkMarkdown: headings and sections", () => {
  const doc = [
    "# Guide",
    "",
    "Intro text.",
    "",
    "## Install",
    "",
    "Run the installer.",
    "",
    "### On Linux",
    "",
    "Use the package.",
    "",
    "## Configure ##",
    "",
    "Edit the file.",
  ].join("\n");

  test("a chunk never crosses a #/## heading; ### sections pack together; the heading path is recorded", async () => {
    const chunks = await chunksOf([doc]);
    expect(chunks.map((c) => [c.text, c.meta.headings, c.meta.section])).toEqual([
      ["# Guide\n\nIntro text.", ["Guide"], "Guide"],
      ["## Install\n\nRun the installer.\n\n### On Linux\n\nUse the package.", ["Guide", "Install"], "Install"],
      ["## Configure ##\n\nEdit the file.", ["Guide", "Configure"], "Configure"],
    ]);
    expectContract(normalize(doc), chunks, 512, 64);
  });

  test("a section holding only headings continues into the next one (no heading-only chunk)", async () => {
    const chunks = await chunksOf(["# Title\n\n## Intro\n\nHello there."]);
    expect(chunks).toHaveLength(1);
    expect(chunks[0]!.meta.headings).toEqual(["Title", "Intro"]);
  });

  test("when a section is split, chunks prefer to end before a ### heading, and a heading is not left at a chunk's end", async () => {
    const text = `## Big\n\n${sentences(30)}\n\n### Small\n\n${sentences(30, 3)}\n\n### Tail\n\n${sentences(3, 5)}`;
    const chunks = await chunksOf([text], { maxTokens: 256, overlapTokens: 32 });
    expectContract(normalize(text), chunks, 256, 32);
    for (const c of chunks) expect(body(c)).not.toMatch(/#+ \w+$/);
    const small = chunks.find((c) => body(c).startsWith("### Small"));
    expect(small).toBeDefined();
    expect(small!.meta.overlapChars).toBe(0); // a chunk starting with a heading carries no overlap
    expect(small!.meta.headings).toEqual(["Big", "Small"]);
  });

  test("# inside a fenced code block is not a heading", async () => {
    const chunks = await chunksOf(["## Real\n\n```sh\n# comment\n## also comment\n```\n\ntext"]);
    expect(chunks).toHaveLength(1);
    expect(chunks[0]!.meta.headings).toEqual(["Real"]);
  });
});

describe("chunkMarkdown: code fences", () => {
  const code = Array.from({ length: 12 }, (_, i) => `  const value${i} = compute(${i}, "item-${i}");\n`).join("");
  const fenced = `\`\`\`ts\nfunction f() {\n${code}\n${code}}\n\`\`\``;

  test("a fence that fits in a chunk is kept whole rather than split with the text before it", async () => {
    const text = `${sentences(12)}\n\n${fenced}\n\nAfter the code.`;
    const fenceTokens = countTokens(fenced);
    const maxTokens = fenceTokens + 40;
    expect(countTokens(`${sentences(12)}\n\n${fenced}`)).toBeGreaterThan(maxTokens);
    const chunks = await chunksOf([text], { maxTokens, overlapTokens: 0 });
    expectContract(normalize(text), chunks, maxTokens, 0);
    expect(chunks.some((c) => body(c).startsWith("```ts") && body(c).includes("}\n```"))).toBe(true);
  });

  test("a fence larger than a chunk is split at line ends, never inside a line", async () => {
    const big = `\`\`\`ts\n${code.repeat(6)}\`\`\``;
    const chunks = await chunksOf([big], { maxTokens: 128, overlapTokens: 16 });
    expect(chunks.length).toBeGreaterThan(3);
    expectContract(normalize(big), chunks, 128, 16);
    const norm = normalize(big);
    for (const c of chunks) {
      expect(["\n", undefined]).toContain(norm[c.meta.charEnd]);
      const start = c.meta.charStart + c.meta.overlapChars;
      expect(norm.slice(0, start)).toMatch(/(^|\n) *$/);
    }
  });
});

describe("chunkMarkdown: long paragraphs and overlap", () => {
  test("a long paragraph splits at sentence ends, each continuation repeating ≤ overlapTokens of the previous tail", async () => {
    const text = sentences(120);
    const chunks = await chunksOf([text], { maxTokens: 100, overlapTokens: 20 });
    expect(chunks.length).toBeGreaterThan(5);
    expectContract(normalize(text), chunks, 100, 20);
    for (const c of chunks.slice(0, -1)) expect(body(c)).toMatch(/\.$/);
    for (const [i, c] of chunks.entries()) {
      if (i === 0) continue;
      expect(c.meta.overlapChars).toBeGreaterThan(0);
      const overlap = c.text.slice(0, c.meta.overlapChars).trimEnd();
      expect(chunks[i - 1]!.text.endsWith(overlap)).toBe(true);
      expect(countTokens(overlap)).toBeLessThanOrEqual(20);
    }
  });

  test("overlapTokens 0 gives disjoint chunks", async () => {
    const chunks = await chunksOf([sentences(80)], { maxTokens: 100, overlapTokens: 0 });
    for (const c of chunks) expect(c.meta.overlapChars).toBe(0);
  });

  test("a run without whitespace (a URL, base64) is split inside the word and still covered", async () => {
    const blob = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789+/".repeat(200);
    const chunks = await chunksOf([`Data: ${blob} end`], { maxTokens: 64, overlapTokens: 0 });
    expectContract(normalize(`Data: ${blob} end`), chunks, 64, 0);
    expect(
      chunks
        .map((c) => c.text)
        .join("")
        .replace(/\s/g, ""),
    ).toBe(`Data:${blob}end`);
  });

  test("a section whose exact count is one token over maxTokens is split, although its per-piece estimate fits", async () => {
    // Found by searching random base64 with the real tokenizer: the run's two 16-unit pieces
    // count 11 + 11 tokens apart and 23 together, so the estimate says 64 where the text is 65.
    const run = "b6L++WKMquDQiydTDatUc9Syj7jqYhvX";
    const words = Array.from({ length: 42 }, (_, i) => ["one", "two", "three", "four", "five"][i % 5]!);
    const text = `${words.join(" ")} ${run}`;
    const estimate =
      countTokens(words[0]!) + words.slice(1).reduce((n, w) => n + countTokens(` ${w}`), 0) + countTokens(` ${run.slice(0, 16)}`) + countTokens(run.slice(16));
    expect({ estimate, exact: countTokens(text) }).toEqual({ estimate: 64, exact: 65 });

    const chunks = await chunksOf([text], { maxTokens: 64, overlapTokens: 0 });
    expectContract(normalize(text), chunks, 64, 0);
    expect(chunks.map((c) => c.text)).toEqual([words.join(" "), run]);
  });

  test("unspaced CJK text and emoji split without breaking surrogate pairs", async () => {
    const text = "漢字かな交じり文😀".repeat(300);
    const chunks = await chunksOf([text], { maxTokens: 64, overlapTokens: 8 });
    expectContract(normalize(text), chunks, 64, 8);
    for (const c of chunks) expect(c.text).toBe(c.text.toWellFormed());
  });
});

describe("chunkMarkdown: pages", () => {
  test("page markers set meta.page for the chunks that start after them", async () => {
    const text = `${pageMarker(1)}\n\n# A\n\n${sentences(20)}\n\n${pageMarker(2)}\n\n${sentences(20, 4)}`;
    const chunks = await chunksOf([text], { maxTokens: 128, overlapTokens: 0 });
    expect(chunks[0]!.meta.page).toBe(1);
    expect(chunks.at(-1)!.meta.page).toBe(2);
    const pages = chunks.map((c) => c.meta.page!);
    expect(pages).toEqual([...pages].sort((a, b) => a - b));
  });

  test("without markers there is no page", async () => {
    const [chunk] = await chunksOf(["text"]);
    expect(chunk!.meta).not.toHaveProperty("page");
  });
});

describe("chunkMarkdown: streaming input", () => {
  test("accepts an async stream of UTF-8 bytes", async () => {
    async function* bytes() {
      const all = new TextEncoder().encode("# Ünïcödé\n\nbody text");
      for (let i = 0; i < all.length; i += 3) yield all.slice(i, i + 3);
    }
    const chunks: unknown[] = [];
    for await (const c of chunkMarkdown(bytes())) chunks.push(c);
    expect(chunks).toEqual(await chunksOf(["# Ünïcödé\n\nbody text"]));
  });
});
