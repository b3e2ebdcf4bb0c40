/**
 * `Authorization: Bearer <token>` as RFC 6750 §2.1 defines it: the scheme is case-insensitive
 * (`bearer`, `BEARER`), one or more spaces, then the token (`b64token`). Shared by the API's
 * user tokens and the metrics token of the API and the worker.
 */
import { createHash, timingSafeEqual } from "node:crypto";

const BEARER = /^bearer +([A-Za-z0-9\-._~+/]+=*)$/i;

/** The token of a `Bearer` authorization header, or undefined when the header is not one. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  return typeof header === "string" ? BEARER.exec(header.trim())?.[1] : undefined;
}

/** Constant-time comparison of a presented secret with the expected one (hashed first: equal lengths). */
export function sameSecret(presented: string | undefined, expected: string): boolean {
  if (presented === undefined) return false;
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(presented), digest(expected));
}
