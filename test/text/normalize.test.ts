import fc from "fast-check";
import { describe, expect, test } from "vitest";
import { LineNormalizer, normalize, normalizeStream, NORMALIZATION_VERSION } from "../../src/text/normalize.ts";
import { splitAt } from "../support/streams.ts";

const RUNS = Number(process.env.PROP_RUNS) || 300;

async function collect(source: AsyncIterable<string>): Promise<string> {
  let out = "";
  for await (const piece of source) out += piece;
  return out;
}

/** Characters that exercise every rule: line endings, whitespace kinds, BOM, combining marks, jamo, astral, lone surrogates. */
const nastyChar = fc.oneof(
  fc.constantFrom(
    "\r",
    "\n",
    "\r\n",
    " ",
    "\t",
    "\u00a0",
    "\u3000",
    "\u2000",
    "\u2028",
    "\u000b",
    "\uFEFF",
    "e",
    "\u0301",
    "\u0327",
    "\u0323",
    "é",
    "\u1100",
    "\u1161",
    "\u11a8",
    "가",
    "\u0915",
    "\u093c",
    "#",
    "`",
    "a",
    "Z",
    ".",
    "漢",
    "か",
    "\u3099",
    "😀",
    "\ud83d",
    "\ude00",
    "Å",
    "\u212b",
  ),
  fc.string({ unit: "binary", minLength: 1, maxLength: 1 }),
);
const nastyText = fc.string({ unit: nastyChar, maxLength: 120 });

async function* fromArray<T>(items: T[]): AsyncGenerator<T> {
  for (const item of items) yield item;
}

describe("normalize: rules by example", () => {
  test("CRLF and lone CR become LF", () => {
    expect(normalize("a\r\nb\rc\n")).toBe("a\nb\nc\n");
  });

  test("trailing whitespace is removed, leading indentation and inner tabs kept", () => {
    expect(normalize("  a \t\n\tb\tc\u00a0\u3000\n")).toBe("  a\n\tb\tc\n");
  });

  test("each line is put in NFC", () => {
    expect(normalize("Cafe\u0301\n")).toBe("Café\n");
    expect(normalize("\u1100\u1161\u11a8")).toBe("각\n");
    expect(normalize("\u212b")).toBe("Å\n");
  });

  test("runs of blank (or whitespace-only) lines collapse to one blank line", () => {
    expect(normalize("a\n\n\n\nb\n")).toBe("a\n\nb\n");
    expect(normalize("a\n  \n\t\r\n\nb")).toBe("a\n\nb\n");
    expect(normalize("a\nb")).toBe("a\nb\n");
  });

  test("leading and trailing blank lines are dropped; exactly one final newline", () => {
    expect(normalize("\n\n   \n  code\n\n\n")).toBe("  code\n");
    expect(normalize("a")).toBe("a\n");
  });

  test("an empty or all-whitespace document normalizes to the empty string", () => {
    expect(normalize("")).toBe("");
    expect(normalize(" \n\t\r\n\uFEFF\n")).toBe("");
  });

  test("U+FEFF is removed anywhere, so a BOM after blank lines does not survive a second pass", () => {
    expect(normalize("\uFEFF# Title")).toBe("# Title\n");
    expect(normalize("\uFEFF\n\uFEFFx\uFEFFy")).toBe("xy\n");
  });

  test("the version is exported for the parsed-hash record", () => {
    expect(NORMALIZATION_VERSION).toMatch(/^\d+$/);
  });
});

describe("normalizeStream: by example", () => {
  test("a CRLF split across pieces is one line break", async () => {
    expect(await collect(normalizeStream(["a\r", "\nb\r", "", "\r\nc"]))).toBe("a\nb\n\nc\n");
  });

  test("UTF-8 split inside a character decodes correctly", async () => {
    const bytes = new TextEncoder().encode("Cafe\u0301 😀\n");
    const pieces = [...bytes].map((b) => Uint8Array.of(b));
    expect(await collect(normalizeStream(pieces))).toBe("Café 😀\n");
  });

  test("a string after an incomplete UTF-8 sequence ends it as U+FFFD", async () => {
    const euro = new TextEncoder().encode("€");
    expect(await collect(normalizeStream([euro.slice(0, 2), "x"]))).toBe("\uFFFDx\n");
  });

  test("a combining mark in the next piece still composes with its base", async () => {
    expect(await collect(normalizeStream(["Cafe", "\u0301\n"]))).toBe("Café\n");
  });

  test("a huge single line is emitted in bounded pieces", async () => {
    let maxPending = 0;
    const line = "lorem ipsum dolor sit amet ".repeat(40_000); // ~1 MB, no newline
    const pieces = splitAt(
      line,
      Array.from({ length: 200 }, (_, i) => i * 5_399),
    );
    const out = await collect(
      normalizeStream(fromArray(pieces), {
        maxPendingChars: 4096,
        onStats: (s) => (maxPending = Math.max(maxPending, s.pendingChars)),
      }),
    );
    expect(out).toBe(normalize(line));
    expect(maxPending).toBeLessThanOrEqual(4096 + 5_399);
  });
});

describe("normalize: properties", () => {
  // Normalizing twice changes nothing.
  test("idempotent", () => {
    fc.assert(
      fc.property(nastyText, (s) => {
        const once = normalize(s);
        expect(normalize(once)).toBe(once);
      }),
      { numRuns: RUNS },
    );
  });

  // The output has no CR, no trailing whitespace, no BOM, no blank-line runs, is NFC, and ends in exactly one LF (or is empty).
  test("output shape", () => {
    fc.assert(
      fc.property(nastyText, (s) => {
        const out = normalize(s);
        if (out === "") return;
        expect(out).not.toMatch(/[\r\uFEFF]/);
        expect(out.endsWith("\n") && !out.endsWith("\n\n") && !out.startsWith("\n")).toBe(true);
        expect(out).not.toContain("\n\n\n");
        for (const line of out.slice(0, -1).split("\n")) expect(line).toBe(line.trimEnd().normalize("NFC"));
      }),
      { numRuns: RUNS },
    );
  });

  // For any split of the text into string pieces and any long-line threshold, streaming equals batch normalization.
  test("streaming over string pieces equals batch", async () => {
    await fc.assert(
      fc.asyncProperty(nastyText, fc.array(fc.nat(), { maxLength: 12 }), fc.integer({ min: 1, max: 40 }), async (s, cuts, maxPendingChars) => {
        const out = await collect(normalizeStream(fromArray(splitAt(s, cuts)), { maxPendingChars }));
        expect(out).toBe(normalize(s));
      }),
      { numRuns: RUNS },
    );
  });

  // For any split of the UTF-8 bytes (including inside multi-byte characters), streaming equals batch normalization of the decoded text.
  test("streaming over byte pieces equals batch", async () => {
    await fc.assert(
      fc.asyncProperty(nastyText, fc.array(fc.nat(), { maxLength: 12 }), fc.integer({ min: 1, max: 40 }), async (s, cuts, maxPendingChars) => {
        const bytes = new TextEncoder().encode(s);
        const out = await collect(normalizeStream(fromArray(splitAt(bytes, cuts)), { maxPendingChars }));
        expect(out).toBe(normalize(new TextDecoder().decode(bytes)));
      }),
      { numRuns: RUNS },
    );
  });

  // The synchronous core gives the same result as the batch function when fed in pieces.
  test("LineNormalizer push/end equals batch", () => {
    fc.assert(
      fc.property(nastyText, fc.array(fc.nat(), { maxLength: 8 }), (s, cuts) => {
        const n = new LineNormalizer(3);
        let out = "";
        for (const piece of splitAt(s, cuts)) out += n.push(piece);
        expect(out + n.end()).toBe(normalize(s));
      }),
      { numRuns: RUNS },
    );
  });
});
