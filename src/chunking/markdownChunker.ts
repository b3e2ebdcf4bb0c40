/**
 * The deterministic, heading-aware markdown chunker (SPEC §4 `parse_validated → chunking →
 * chunks_stored`). Chunk ids are `uuidv5("{document_id}:{CHUNKER_NAME}:{CHUNKER_VERSION}:{ord}")`
 * (SPEC §3), so the same document must always give the same chunks under the same version.
 *
 * ## Contract
 * - Input is normalized first ({@link normalizeStream}; idempotent, so normalized input passes
 *   through unchanged). Offsets are UTF-16 code-unit indices into that normalized document.
 * - `chunk.text === normalized.slice(meta.charStart, meta.charEnd)`, always. The first
 *   `meta.overlapChars` units of it are the overlap (a tail of the previous chunk, plus the
 *   whitespace between); the rest, `normalized.slice(charStart + overlapChars, charEnd)`, is the
 *   chunk's own body. Bodies are disjoint, in order, start and end on non-whitespace, and
 *   together hold every non-whitespace character of the document.
 * - `tokenCount === countTokens(text)` (cl100k_base, the encoding of text-embedding-3-*),
 *   `1 ≤ tokenCount ≤ maxTokens`; `ord` runs 0..n-1; `charStart` never decreases. An empty (or
 *   all-whitespace) document gives zero chunks.
 * - The result does not depend on how the input stream is split.
 *
 * ## Rules
 * 1. Pieces. The text is cut into pieces: words (maximal runs of non-whitespace) of at most
 *    {@link MAX_PIECE_UNITS} units; a longer run (a URL, base64, unspaced CJK text) is cut every
 *    16 units, never inside a surrogate pair. A chunk body is a run of whole pieces.
 * 2. Breaks. The break before each piece has a rank, highest first: top-level heading (`#`,
 *    `##`), heading (`###`…`######`), paragraph (after a blank line, around a fenced code
 *    block), line, sentence (after `.`, `!`, `?`, `…`, outside code), word, inside a word.
 *    Inside a fenced code block lines rank as "line" and there are no sentences, so a fence is
 *    only split when it does not fit in a chunk of its own. The break right after a heading
 *    line ranks as "word", so a heading is never left alone at the end of a chunk when the text
 *    it introduces could follow it.
 * 3. Sections. A chunk never crosses a `#`/`##` heading, except that a chunk holding only
 *    headings so far continues into the next section (no heading-only chunks for "# Title"
 *    followed by "## Intro").
 * 4. Packing. If the rest of the section fits in `maxTokens`, it is one chunk. Otherwise the
 *    chunk ends at the highest-ranked break that fits, the latest among equals. Fit is decided
 *    by the exact token count of the chunk text, overlap included; per-piece counts only pick
 *    the candidate.
 * 5. Overlap. A chunk that continues a section (does not start with a heading line) starts with
 *    the longest tail of the previous chunk's body of at most `overlapTokens` tokens that starts
 *    at a piece, is not the whole body, and does not reach back across a heading line. If even
 *    one piece does not fit after the overlap, the overlap is dropped.
 * 6. Meta. `headings` is the heading path in effect at the body's first non-heading line (or at
 *    its end when the body is only headings); `section` is its last entry or "". Heading text is
 *    the line without its `#` marks and closing sequence, capped at 200 units. `page` is set
 *    from page-marker lines `<!-- page: N -->` (see {@link pageMarker}), as in effect at the
 *    body's first character; absent when the document has no markers.
 *
 * Line classification (heading, fence, page marker) looks at most at a line's first 256 units,
 * so a single enormous line streams through like any other text (setext headings, indented code
 * and HTML blocks are ordinary text here).
 *
 * ## Memory
 * The chunker holds the current chunk's overlap and body, the pieces read ahead to decide where
 * it ends (at most one piece past `maxTokens` tokens), and at most {@link READ_SLICE_UNITS} more
 * units read from the current source piece, regardless of document size. `onStats` reports it.
 * The one exception is a single whitespace run (indentation) of unbounded length, which is held
 * until its end.
 */
import { z } from "zod";
import { countTokens } from "../clients/tokens.ts";
import { normalizeStream } from "../text/normalize.ts";

export const CHUNKER_NAME = "md-heading-token";

/**
 * Version of the chunk output. It is part of every chunk id, so bump it whenever the output
 * for some input could change: any rule above, an option default, {@link MAX_PIECE_UNITS} and
 * the other constants here, the tokenizer (encoding or a `gpt-tokenizer` upgrade that changes
 * counts), or the normalization (`NORMALIZATION_VERSION`). Old chunks stay valid under their
 * own version; a bump makes new work re-chunk under new ids instead of mixing versions.
 */
export const CHUNKER_VERSION = "1.0.0";

/** Pieces (rule 1) are at most this many UTF-16 units: ≤ 48 tokens, so one always fits. */
export const MAX_PIECE_UNITS = 16;
/** The chunker pulls the source in slices of this many units (bounds read-ahead). */
export const READ_SLICE_UNITS = 4096;
/** Lines are classified from at most this many leading units. */
const CLASSIFY_UNITS = 256;
const MAX_HEADING_UNITS = 200;

export const ChunkerOptions = z
  .object({
    /** Upper bound on every chunk's token count. text-embedding-3-* accepts 8192 per input. */
    maxTokens: z.number().int().min(64).max(8191).default(512),
    /** Tokens of the previous chunk's tail repeated at the start of the next (rule 5). */
    overlapTokens: z.number().int().min(0).default(64),
  })
  .refine((o) => o.overlapTokens * 2 <= o.maxTokens, {
    message: "overlapTokens must be at most half of maxTokens",
    path: ["overlapTokens"],
  });
export type ChunkerOptions = z.output<typeof ChunkerOptions>;

export interface ChunkerStats {
  /** UTF-16 units of document text the chunker holds right now. */
  bufferedChars: number;
  /** The largest `bufferedChars` so far in this run. */
  maxBufferedChars: number;
}

export interface ChunkMarkdownOptions extends z.input<typeof ChunkerOptions> {
  /** Called whenever the chunker's text buffer changes size; for memory tests and metrics. */
  onStats?: (stats: ChunkerStats) => void;
  /**
   * How many units of source text are moved into the window at a time (default
   * {@link READ_SLICE_UNITS}). Output is identical for any value; tests set it tiny so every
   * "decide only once enough text is known" path runs.
   */
  readSliceUnits?: number;
}

export interface ChunkMeta {
  headings: string[];
  section: string;
  charStart: number;
  charEnd: number;
  /** Leading units of `text` that repeat the previous chunk's tail (0: no overlap). */
  overlapChars: number;
  page?: number;
}

export interface Chunk {
  ord: number;
  text: string;
  tokenCount: number;
  meta: ChunkMeta;
}

/** The line that marks the start of page `n` in parsed markdown (rule 6). */
export function pageMarker(n: number): string {
  return `<!-- page: ${n} -->`;
}

/**
 * Chunk a markdown stream. See the module comment for the contract and the rules.
 *
 * @throws ZodError when the options are invalid.
 * @example
 * for await (const chunk of chunkMarkdown(storageStream, { maxTokens: 512, overlapTokens: 64 })) {
 *   await insertChunk(documentId, CHUNKER_NAME, CHUNKER_VERSION, chunk);
 * }
 */
export async function* chunkMarkdown(
  source: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  options: ChunkMarkdownOptions = {},
): AsyncGenerator<Chunk, void, undefined> {
  const { maxTokens, overlapTokens } = ChunkerOptions.parse({
    maxTokens: options.maxTokens,
    overlapTokens: options.overlapTokens,
  });
  const doc = new PieceReader(normalizeStream(source), options.onStats, options.readSliceUnits);
  const q = doc.pieces;
  let path: readonly Heading[] = [];
  let ord = 0;
  /** Where the next chunk's text starts when it carries an overlap. */
  let overlapStart: number | undefined;

  while (await doc.has(0)) {
    const first = q[0]!;
    let textStart = overlapStart ?? first.start;
    let cut = 0;
    let tokenCount = 0;
    for (;;) {
      // Read pieces until the section (or document) ends or the estimate passes the budget.
      let limit = 1;
      let whole = false;
      let est = countTokens(doc.slice(textStart, first.end));
      let hasContent = !first.inHeading;
      if (est <= maxTokens) {
        for (let i = 1; ; i++) {
          if (!(await doc.has(i))) {
            whole = true;
            limit = i;
            break;
          }
          const p = q[i]!;
          if (p.topHeading && hasContent) {
            whole = true;
            limit = i;
            break;
          }
          hasContent ||= !p.inHeading;
          est += p.tokens;
          if (est > maxTokens) {
            limit = i;
            break;
          }
        }
        if (whole) {
          tokenCount = countTokens(doc.slice(textStart, q[limit - 1]!.end));
          if (tokenCount <= maxTokens) cut = limit;
          else limit -= 1;
        }
        // Highest-ranked break that fits, the latest among equals; back off when the exact
        // count disagrees with the estimate (per-piece counts ignore merges across pieces).
        while (cut === 0 && limit >= 1) {
          let j = limit;
          for (let k = limit - 1; k >= 1; k--) if (q[k]!.brk > q[j]!.brk) j = k;
          tokenCount = countTokens(doc.slice(textStart, q[j - 1]!.end));
          if (tokenCount <= maxTokens) cut = j;
          else limit = j - 1;
        }
      }
      if (cut > 0) break;
      if (textStart === first.start) {
        // Unreachable: a piece is ≤ 16 units, ≤ 48 tokens, and maxTokens ≥ 64.
        throw new Error(`chunkMarkdown: internal error, piece at ${first.start} exceeds ${maxTokens} tokens`);
      }
      textStart = first.start; // rule 5: drop the overlap rather than fail
    }

    const body = q.slice(0, cut);
    const last = body[body.length - 1]!;
    let metaPath: readonly Heading[] | undefined;
    for (const p of body) {
      if (p.heading) path = enter(path, p.heading);
      if (!p.inHeading) metaPath ??= path;
    }
    metaPath ??= path;
    const text = doc.slice(textStart, last.end);
    const meta: ChunkMeta = {
      headings: metaPath.map((h) => h.text),
      section: metaPath.at(-1)?.text ?? "",
      charStart: textStart,
      charEnd: last.end,
      overlapChars: first.start - textStart,
    };
    if (first.page !== undefined) meta.page = first.page;
    yield { ord: ord++, text, tokenCount, meta };

    const next = (await doc.has(cut)) ? q[cut] : undefined;
    overlapStart = next && !next.inHeading ? chooseOverlap(doc, body, overlapTokens) : undefined;
    q.splice(0, cut);
    doc.discardBefore(overlapStart ?? q[0]?.start ?? Number.POSITIVE_INFINITY);
  }
}

/** Rule 5: the start of the longest fitting proper tail of `body`, or undefined. */
function chooseOverlap(doc: PieceReader, body: readonly Piece[], overlapTokens: number): number | undefined {
  if (overlapTokens === 0 || body.length < 2) return undefined;
  const end = body[body.length - 1]!.end;
  let floor = 1;
  for (let k = body.length - 1; k >= 1; k--) {
    if (body[k]!.heading) {
      floor = k;
      break;
    }
  }
  let k = body.length;
  let est = 0;
  while (k - 1 >= floor && est + body[k - 1]!.tokens <= overlapTokens) est += body[--k]!.tokens;
  for (; k < body.length; k++) {
    if (countTokens(doc.slice(body[k]!.start, end)) <= overlapTokens) return body[k]!.start;
  }
  return undefined;
}

interface Heading {
  level: number;
  text: string;
}

function enter(path: readonly Heading[], h: Heading): Heading[] {
  return [...path.filter((x) => x.level < h.level), h];
}

/** Break ranks (rule 2); higher is a better place to end a chunk. */
const BRK = { char: 0, word: 1, sentence: 2, line: 3, paragraph: 4, heading: 5, section: 6 } as const;

interface Piece {
  /** End of the previous piece: [gapStart, start) is whitespace. */
  gapStart: number;
  start: number;
  end: number;
  /** Rank of the break before this piece. */
  brk: number;
  /** First piece of a `#`/`##` heading line. */
  topHeading: boolean;
  /** Set on the first piece of a heading line. */
  heading: Heading | undefined;
  /** The piece belongs to a heading line. */
  inHeading: boolean;
  page: number | undefined;
  /** Estimate: tokens of [gapStart, end). */
  tokens: number;
}

const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const ATX = /^ {0,3}(#{1,6})(?:[ \t]+(.*))?$/;
const PAGE = /^<!--\s*page:?\s*(\d{1,9})\s*-->$/i;
const SENTENCE_END = /[.!?…]["'”’)\]*_]*$/;

function isSpace(code: number): boolean {
  if (code === 0x20 || code === 0x09) return true;
  return code > 0x7f ? /\s/.test(String.fromCharCode(code)) : code === 0x0b || code === 0x0c;
}

/**
 * Reads normalized text lazily and turns it into pieces (rules 1, 2, 6), keeping only the text
 * from the oldest position the packer may still slice.
 */
class PieceReader {
  readonly pieces: Piece[] = [];
  private readonly input: AsyncIterator<string>;
  private pendingIn = "";
  private eof = false;
  /** Document text [bufStart, bufStart + buf.length). */
  private buf = "";
  private bufStart = 0;
  private maxBuffered = 0;

  // Scanner state.
  private scan = 0;
  private gapStart = 0;
  private atLineStart = true;
  private firstOfLine = false;
  private sentenceEnd = false;
  private prevBlank = false;
  private afterHeading = false;
  private afterFence = false;
  private fence: { char: string; len: number } | undefined;
  private page: number | undefined;
  private line = {
    brk: BRK.paragraph as number,
    top: false,
    heading: undefined as Heading | undefined,
    inFence: false,
    closesFence: false,
  };

  private readonly onStats?: (stats: ChunkerStats) => void;
  private readonly readSlice: number;

  constructor(input: AsyncIterable<string>, onStats?: (stats: ChunkerStats) => void, readSlice = READ_SLICE_UNITS) {
    this.onStats = onStats;
    this.readSlice = readSlice;
    this.input = input[Symbol.asyncIterator]();
  }

  slice(from: number, to: number): string {
    return this.buf.slice(from - this.bufStart, to - this.bufStart);
  }

  /** Whether piece `i` exists, reading more input as needed. */
  async has(i: number): Promise<boolean> {
    while (this.pieces.length <= i) {
      if (this.eof && this.scan >= this.bufStart + this.buf.length) return false;
      if (this.pendingIn === "" && !this.eof) {
        const r = await this.input.next();
        if (r.done) this.eof = true;
        else this.pendingIn = r.value;
      }
      if (this.pendingIn !== "") {
        const take = this.pendingIn.slice(0, Math.max(1, this.readSlice));
        this.pendingIn = this.pendingIn.slice(take.length);
        this.buf += take;
        this.report();
      }
      this.scanAvailable();
    }
    return true;
  }

  /** Forget text before `pos` (never text the scanner still needs). */
  discardBefore(pos: number): void {
    const keep = Math.min(pos, this.gapStart);
    if (keep > this.bufStart) {
      this.buf = this.buf.slice(keep - this.bufStart);
      this.bufStart = keep;
      this.report();
    }
  }

  private report(): void {
    this.maxBuffered = Math.max(this.maxBuffered, this.buf.length);
    this.onStats?.({ bufferedChars: this.buf.length, maxBufferedChars: this.maxBuffered });
  }

  private code(pos: number): number {
    return this.buf.charCodeAt(pos - this.bufStart);
  }

  /** Turn as much buffered text into pieces as can be decided without more input. */
  private scanAvailable(): void {
    const end = this.bufStart + this.buf.length;
    // `eof` only counts once the last source piece has been fully moved into `buf`.
    const final = this.eof && this.pendingIn === "";
    while (this.scan < end) {
      if (this.atLineStart) {
        if (!this.classifyLine(final)) return;
        continue;
      }
      const c = this.code(this.scan);
      if (c === 0x0a) {
        this.scan++;
        this.endLine();
        continue;
      }
      if (isSpace(c)) {
        this.scan++;
        continue;
      }
      let e = this.scan;
      const lim = this.scan + MAX_PIECE_UNITS;
      while (e < end && e < lim && !isSpace(this.code(e)) && this.code(e) !== 0x0a) e++;
      if (e === end && e < lim && !final) return; // the word may go on
      if (e === lim && e - 1 > this.scan && (this.code(e - 1) & 0xfc00) === 0xd800) e--;
      this.emit(this.scan, e);
      this.scan = e;
    }
  }

  private emit(start: number, end: number): void {
    const brk = this.firstOfLine ? this.line.brk : this.gapStart === start ? BRK.char : this.sentenceEnd ? BRK.sentence : BRK.word;
    this.pieces.push({
      gapStart: this.gapStart,
      start,
      end,
      brk,
      topHeading: this.firstOfLine && this.line.top,
      heading: this.firstOfLine ? this.line.heading : undefined,
      inHeading: this.line.heading !== undefined,
      page: this.page,
      tokens: countTokens(this.slice(this.gapStart, end)),
    });
    this.sentenceEnd = !this.line.inFence && SENTENCE_END.test(this.slice(start, end));
    this.firstOfLine = false;
    this.gapStart = end;
  }

  /**
   * Classify the line starting at `scan` from its first ≤ 256 units (or the whole line when
   * shorter). Returns false when more input is needed to decide.
   */
  private classifyLine(final: boolean): boolean {
    const rel = this.scan - this.bufStart;
    const nl = this.buf.indexOf("\n", rel);
    const complete = nl !== -1 && nl - rel <= CLASSIFY_UNITS;
    if (!complete && this.buf.length - rel <= CLASSIFY_UNITS && !final) return false;
    const text = complete ? this.buf.slice(rel, nl) : this.buf.slice(rel, rel + CLASSIFY_UNITS);
    if (complete && text === "") {
      this.prevBlank = true;
      this.scan++;
      return true;
    }
    const line = { brk: BRK.line as number, top: false, heading: undefined as Heading | undefined, inFence: false, closesFence: false };
    const fence = FENCE.exec(text);
    if (this.fence) {
      line.inFence = true;
      const f = this.fence;
      if (complete && fence && fence[1]![0] === f.char && fence[1]!.length >= f.len && fence[2]!.trim() === "") {
        line.closesFence = true;
        this.fence = undefined;
      }
    } else if (fence && (fence[1]![0] === "~" || !fence[2]!.includes("`"))) {
      line.brk = BRK.paragraph;
      line.inFence = true;
      this.fence = { char: fence[1]![0]!, len: fence[1]!.length };
    } else {
      const atx = ATX.exec(text);
      if (atx) {
        const level = atx[1]!.length;
        let title = (atx[2] ?? "").trim();
        if (complete) title = title.replace(/(?:^|[ \t]+)#+$/, "").trim();
        if (title.length > MAX_HEADING_UNITS) {
          const cut = (title.charCodeAt(MAX_HEADING_UNITS - 1) & 0xfc00) === 0xd800 ? MAX_HEADING_UNITS - 1 : MAX_HEADING_UNITS;
          title = title.slice(0, cut);
        }
        line.heading = { level, text: title };
        line.top = level <= 2;
        line.brk = level <= 2 ? BRK.section : BRK.heading;
      } else {
        if (complete) {
          const page = PAGE.exec(text);
          if (page) this.page = Number(page[1]);
        }
        if (this.prevBlank || this.afterFence) line.brk = BRK.paragraph;
      }
    }
    // Rule 2: never prefer ending a chunk right after a heading.
    if (this.afterHeading) line.brk = BRK.word;
    this.line = line;
    this.atLineStart = false;
    this.firstOfLine = true;
    return true;
  }

  private endLine(): void {
    this.afterHeading = this.line.heading !== undefined;
    this.afterFence = this.line.closesFence;
    this.prevBlank = false;
    this.atLineStart = true;
  }
}
