/**
 * Counterexamples worth keeping: each replays (seed + path) every time its property runs, at no
 * extra cost beyond one run. Add one whenever a property finds a bug: copy `seed` and `path` from
 * the failure report, name the property exactly as its `it(...)` title, say what it caught.
 *
 * A path only means something for the arbitraries it was found with: when a property's
 * generators change, re-find (or drop) its entries.
 */
export interface Regression {
  /** The property's title, as in `checkProperty({ name })`. */
  property: string;
  seed: number;
  path: string;
  note: string;
}

export const REGRESSIONS: Regression[] = [
  {
    property: "vector_sha survives the round trip through Postgres real arrays",
    seed: -701500686,
    path: "41:1:0:0:0:2",
    note: "[-0, 0]: the embed stage wrote String(-0) = '0', storing +0, so the row no longer hashed to its vector_sha (fixed in src/stages/embed.ts realArrayLiteral)",
  },
];
