/** Helpers for stream-splitting properties (normalization, chunking). */

export async function* fromArray<T>(items: T[]): AsyncGenerator<T> {
  for (const item of items) yield item;
}

/** Cut `s` at arbitrary positions (possibly inside surrogate pairs, CRLF, or UTF-8 sequences). */
export function splitAt<T extends { length: number; slice(a: number, b?: number): T }>(s: T, cuts: number[]): T[] {
  const points = [...new Set(cuts.map((c) => c % (s.length + 1)))].sort((a, b) => a - b);
  const pieces: T[] = [];
  let prev = 0;
  for (const p of points) {
    pieces.push(s.slice(prev, p));
    prev = p;
  }
  pieces.push(s.slice(prev));
  return pieces;
}
