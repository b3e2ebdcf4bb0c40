/**
 * Go's `time.Duration.String()` format, which OpenAI uses in `x-ratelimit-reset-*` headers and
 * in its 429 messages: `6m0s`, `1s`, `12ms`, `1.2s`, `1h0m0s`, `0s`.
 */

function trimFraction(intPart: bigint, frac: bigint, digits: number): string {
  if (frac === 0n) return intPart.toString();
  const f = frac.toString().padStart(digits, "0").replace(/0+$/, "");
  return `${intPart}.${f}`;
}

/**
 * Formats a duration given in milliseconds (fractions allowed, rounded to the nanosecond).
 * @example goDuration(360_000) === "6m0s"; goDuration(1_200) === "1.2s"; goDuration(12) === "12ms"
 */
export function goDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms <= 0) return "0s";
  const ns = BigInt(Math.round(ms * 1e6));
  if (ns === 0n) return "0s";
  if (ns < 1000n) return `${ns}ns`;
  if (ns < 1_000_000n) return `${trimFraction(ns / 1000n, ns % 1000n, 3)}µs`;
  if (ns < 1_000_000_000n) return `${trimFraction(ns / 1_000_000n, ns % 1_000_000n, 6)}ms`;
  const hours = ns / 3_600_000_000_000n;
  const rem = ns % 3_600_000_000_000n;
  const minutes = rem / 60_000_000_000n;
  const secNs = rem % 60_000_000_000n;
  const seconds = trimFraction(secNs / 1_000_000_000n, secNs % 1_000_000_000n, 9);
  if (hours > 0n) return `${hours}h${minutes}m${seconds}s`;
  if (minutes > 0n) return `${minutes}m${seconds}s`;
  return `${seconds}s`;
}
