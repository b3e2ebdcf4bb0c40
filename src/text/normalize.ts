/**
 * Markdown normalization: the canonical text that is hashed (`parsed_sha256` dedup, SPEC §4
 * `parsed → parse_validated`) and that chunk offsets point into.
 *
 * Rules, applied in this order (version {@link NORMALIZATION_VERSION}):
 *
 * 1. Decoding: byte input is UTF-8; an invalid or truncated sequence becomes U+FFFD (the
 *    WHATWG `TextDecoder` default) rather than failing the document.
 * 2. U+FEFF (byte-order mark / deprecated zero-width no-break space) is removed wherever it
 *    occurs. Removing it only at the start would not be idempotent: "\uFEFF\uFEFFx" or a BOM
 *    after leading blank lines would surface a new leading BOM on the second pass.
 * 3. Line endings: CRLF and lone CR become LF. No other character ends a line (U+2028, U+0085
 *    and form feeds stay inside their line).
 * 4. Each line is put in Unicode NFC, then trailing whitespace is removed (whatever
 *    `String.prototype.trimEnd` removes: Unicode White_Space such as space, tab, NBSP, U+3000,
 *    plus U+2028/U+2029). Leading whitespace and interior tabs are kept: indentation is markdown
 *    syntax (lists, indented code).
 * 5. A line that is empty after step 4 is blank. Blank lines at the start and end of the
 *    document are dropped; any run of blank lines inside it becomes exactly one blank line.
 * 6. Lines are joined with LF and the result ends with exactly one LF. A document with no
 *    non-blank line normalizes to the empty string "".
 *
 * The result is idempotent: `normalize(normalize(x)) === normalize(x)`.
 *
 * Why NFC per line is exact: LF is a starter that composes with nothing, so
 * `NFC(a + "\n" + b) === NFC(a) + "\n" + NFC(b)`. That is what lets the streaming form hold only
 * one partial line (see {@link normalizeStream}).
 */
export const NORMALIZATION_VERSION = "1";

/** Normalize a whole document held in memory. See the module comment for the rules. */
export function normalize(input: string): string {
  const out: string[] = [];
  let blankPending = false;
  for (const raw of input.replace(/\uFEFF/g, "").split(/\r\n|\r|\n/)) {
    const line = raw.normalize("NFC").trimEnd();
    if (line === "") {
      blankPending = out.length > 0;
      continue;
    }
    if (blankPending) out.push("");
    out.push(line);
    blankPending = false;
  }
  return out.length === 0 ? "" : `${out.join("\n")}\n`;
}

export interface NormalizeStreamOptions {
  /**
   * A partial line longer than this (UTF-16 units) is emitted up to its last safe cut point
   * (see {@link LineNormalizer}) instead of being held until its line feed, so a document with
   * one huge line does not make memory grow with it. Default 65,536. Output is the same for any
   * value; tests set it tiny to exercise the path.
   */
  maxPendingChars?: number;
  /** Called after each input piece with the number of UTF-16 units held back (partial line). */
  onStats?: (stats: { pendingChars: number }) => void;
}

/**
 * Normalize a stream. The concatenation of the yielded pieces equals `normalize(whole input)`
 * for any split of the input, including UTF-8 byte splits inside a character, while the state
 * held between pieces is one partial line (bounded by `maxPendingChars` except for a line with
 * no safe cut point), one pending-blank-line flag and the UTF-8 decoder's ≤ 3 pending bytes.
 *
 * Pieces may be `string` or `Uint8Array` (UTF-8). A string arriving after bytes that end in an
 * incomplete UTF-8 sequence ends that sequence (it decodes to U+FFFD). Empty pieces are never
 * yielded.
 *
 * @example
 * for await (const text of normalizeStream(storageBody)) sha.update(text);
 */
export async function* normalizeStream(
  source: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  options: NormalizeStreamOptions = {},
): AsyncGenerator<string, void, undefined> {
  const normalizer = new LineNormalizer(options.maxPendingChars);
  const decoder = new TextDecoder("utf-8");
  let bytesPending = false;
  for await (const piece of source) {
    let text: string;
    if (typeof piece === "string") {
      // Flushing a decoder with nothing pending returns "", so this is a no-op for pure text.
      text = bytesPending ? decoder.decode() + piece : piece;
      bytesPending = false;
    } else {
      text = decoder.decode(piece, { stream: true });
      bytesPending = true;
    }
    const out = normalizer.push(text);
    options.onStats?.({ pendingChars: normalizer.pendingChars });
    if (out !== "") yield out;
  }
  const out = normalizer.push(bytesPending ? decoder.decode() : "") + normalizer.end();
  options.onStats?.({ pendingChars: 0 });
  if (out !== "") yield out;
}

/**
 * A code unit before which a line can be cut without changing NFC and without the prefix's
 * trailing whitespace being line-final: a starter that is never the second half of a canonical
 * composition and is not whitespace. Printable ASCII qualifies, as do the common CJK blocks, so
 * long lines in English and in CJK scripts both get cut points.
 */
function isSafeCut(code: number): boolean {
  return (
    (code >= 0x21 && code <= 0x7e) ||
    (code >= 0x3041 && code <= 0x3096) || // hiragana letters (not the combining marks 3099/309A)
    (code >= 0x30a1 && code <= 0x30fa) || // katakana letters
    (code >= 0x4e00 && code <= 0x9fff) || // CJK unified ideographs
    (code >= 0xac00 && code <= 0xd7a3) // precomposed Hangul syllables
  );
}

/**
 * The incremental core of {@link normalizeStream}: feed decoded text with `push`, then call
 * `end` once. Exported for callers that already hold text synchronously.
 */
export class LineNormalizer {
  /** Raw text of the current line so far, BOM-free, possibly ending in a lone "\r". */
  private partial = "";
  /** Part of the current line was already emitted (long-line flush). */
  private lineOpen = false;
  private blankPending = false;
  private started = false;
  private readonly maxPending: number;

  constructor(maxPendingChars = 65_536) {
    this.maxPending = Math.max(1, maxPendingChars);
  }

  get pendingChars(): number {
    return this.partial.length;
  }

  push(text: string): string {
    const s = this.partial + text.replace(/\uFEFF/g, "");
    let out = "";
    let pos = 0;
    for (;;) {
      const lf = s.indexOf("\n", pos);
      const cr = s.indexOf("\r", pos);
      const idx = cr === -1 ? lf : lf === -1 ? cr : Math.min(lf, cr);
      // A trailing CR may be the first half of a CRLF split across pieces: wait for the next.
      if (idx === -1 || (s[idx] === "\r" && idx === s.length - 1)) break;
      out += this.line(s.slice(pos, idx));
      pos = idx + (s[idx] === "\r" && s[idx + 1] === "\n" ? 2 : 1);
    }
    this.partial = s.slice(pos);
    if (this.partial.length > this.maxPending) out += this.flushSafePrefix();
    return out;
  }

  end(): string {
    const rest = this.partial;
    this.partial = "";
    // A final lone "\r" ends the last line; anything else is the unterminated last line.
    const out = rest === "" && !this.lineOpen ? "" : this.line(rest.endsWith("\r") ? rest.slice(0, -1) : rest);
    this.lineOpen = false;
    return out;
  }

  /** One complete line (or the rest of an open one) → its normalized output. */
  private line(raw: string): string {
    const line = raw.normalize("NFC").trimEnd();
    if (this.lineOpen) {
      // The flushed prefix ended before a non-whitespace character that is still in `raw`, so
      // the line is not blank and `raw` carries the line's real trailing whitespace.
      this.lineOpen = false;
      return `${line}\n`;
    }
    if (line === "") {
      this.blankPending = this.started;
      return "";
    }
    return `${this.openLine()}${line}\n`;
  }

  private openLine(): string {
    const prefix = this.blankPending ? "\n" : "";
    this.blankPending = false;
    this.started = true;
    return prefix;
  }

  private flushSafePrefix(): string {
    const p = this.partial;
    // Never cut off a trailing "\r" (it may pair with a coming "\n") and keep ≥ 1 char emitted.
    let k = p.endsWith("\r") ? p.length - 2 : p.length - 1;
    while (k >= 1 && !isSafeCut(p.charCodeAt(k))) k--;
    if (k < 1) return "";
    const out = (this.lineOpen ? "" : this.openLine()) + p.slice(0, k).normalize("NFC");
    this.lineOpen = true;
    this.partial = p.slice(k);
    return out;
  }
}
