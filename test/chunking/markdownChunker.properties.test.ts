import fc from "fast-check";
import { describe, expect, test } from "vitest";
import { normalize } from "../../src/text/normalize.ts";
import { chunkerOptions, chunksOf, expectContract, fromArray, markdownDoc, RUNS, splitAt, TIMEOUT } from "./helpers.ts";

describe("chunkMarkdown: properties", () => {
  // Same input and options give the same chunks, field for field.
  test(
    "deterministic",
    async () => {
      await fc.assert(
        fc.asyncProperty(markdownDoc, chunkerOptions, async (doc, opts) => {
          expect(await chunksOf([doc], opts)).toEqual(await chunksOf([doc], opts));
        }),
        { numRuns: RUNS },
      );
    },
    TIMEOUT,
  );

  // Every chunk is non-empty, counts its tokens exactly, stays within maxTokens, and ords run 0..n-1 without gaps.
  // Chunks cover the normalized text in order: text is the slice at its offsets, bodies are disjoint and hold every non-whitespace char, overlap is a proper tail of the previous body.
  test(
    "within maxTokens, gap-free ords, ordered full coverage",
    async () => {
      await fc.assert(
        fc.asyncProperty(markdownDoc, chunkerOptions, async (doc, opts) => {
          const chunks = await chunksOf([doc], opts);
          expectContract(normalize(doc), chunks, opts.maxTokens, opts.overlapTokens);
        }),
        { numRuns: RUNS },
      );
    },
    TIMEOUT,
  );

  // Chunking does not depend on how the input stream is split (string or UTF-8 byte pieces) nor on how much text the chunker reads at a time.
  test(
    "independent of stream splits",
    async () => {
      await fc.assert(
        fc.asyncProperty(
          markdownDoc,
          chunkerOptions,
          fc.array(fc.nat(), { maxLength: 20 }),
          fc.boolean(),
          fc.integer({ min: 1, max: 64 }),
          async (doc, opts, cuts, asBytes, readSliceUnits) => {
            const whole = await chunksOf([doc], opts);
            const pieces = asBytes ? splitAt(new TextEncoder().encode(doc), cuts) : splitAt(doc, cuts);
            expect(await chunksOf(fromArray<string | Uint8Array>(pieces), { ...opts, readSliceUnits })).toEqual(whole);
          },
        ),
        { numRuns: RUNS },
      );
    },
    TIMEOUT,
  );

  // Chunking normalized text gives the same chunks as chunking the raw text (offsets always refer to the normalized document).
  test(
    "normalizes its input",
    async () => {
      await fc.assert(
        fc.asyncProperty(markdownDoc, chunkerOptions, async (doc, opts) => {
          expect(await chunksOf([normalize(doc)], opts)).toEqual(await chunksOf([doc], opts));
        }),
        { numRuns: RUNS },
      );
    },
    TIMEOUT,
  );
});
