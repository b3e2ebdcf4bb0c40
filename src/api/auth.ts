/**
 * Bearer JWTs as Supabase issues them. HS256 tokens are verified with the project's JWT secret
 * (`SUPABASE_JWT_SECRET`); projects on asymmetric signing keys can also set `SUPABASE_JWKS_URL`
 * and their RS256/ES256 tokens are checked against it. Verification is `jose`'s: signature,
 * algorithm allow-list (never `none`), `exp` required and checked, `nbf` honoured.
 *
 * Who is who:
 * - `role: "service_role"`: an operator or a backend (Supabase's service-role key, which has no
 *   `aud`); sees and retries every document.
 * - `role: "authenticated"` with `sub` a UUID and `aud` the configured audience (default
 *   `authenticated`; and `iss` the configured issuer when one is set): that user, who sees only
 *   their own documents (anyone else's answers 404, as if it did not exist).
 * - anything else (no token, expired, forged, another audience or issuer, no `role`, `anon`):
 *   401 with one generic body, so a caller learns nothing about why.
 */
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify, type JWTPayload } from "jose";
import type { FastifyRequest } from "fastify";
import { bearerToken } from "../bearer.ts";
import { unauthorized } from "./errors.ts";

export interface Principal {
  /** The user's id (`sub`), or null for a service-role token without one. */
  userId: string | null;
  role: string;
  /** Service role: may see and retry every document. */
  isService: boolean;
}

export interface Authenticator {
  authenticate(request: FastifyRequest): Promise<Principal>;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

export interface AuthOptions {
  /** HS256 secret (Supabase's legacy JWT secret). */
  jwtSecret?: string | undefined;
  /** JWKS URL for asymmetric keys (e.g. `https://<ref>.supabase.co/auth/v1/.well-known/jwks.json`). */
  jwksUrl?: string | undefined;
  /** The `aud` users' tokens must carry (`SUPABASE_JWT_AUDIENCE`, default `authenticated`). */
  audience?: string | undefined;
  /** The `iss` users' tokens must carry, when set (`SUPABASE_JWT_ISSUER`). */
  issuer?: string | undefined;
  /** Clock skew tolerated on `exp`/`nbf`, seconds. */
  clockToleranceSeconds?: number;
}

/**
 * @example
 * const auth = createAuthenticator({ jwtSecret: config.SUPABASE_JWT_SECRET });
 * const who = await auth.authenticate(request); // throws ApiError 401 when unusable
 */
export function createAuthenticator(options: AuthOptions): Authenticator {
  if (!options.jwtSecret && !options.jwksUrl) throw new Error("createAuthenticator: set jwtSecret or jwksUrl");
  const secret = options.jwtSecret ? new TextEncoder().encode(options.jwtSecret) : undefined;
  const jwks = options.jwksUrl ? createRemoteJWKSet(new URL(options.jwksUrl)) : undefined;
  const clockTolerance = options.clockToleranceSeconds ?? 30;
  const audience = options.audience ?? "authenticated";

  async function verify(token: string): Promise<JWTPayload> {
    const { alg } = decodeProtectedHeader(token);
    if (alg === "HS256" && secret) {
      return (await jwtVerify(token, secret, { algorithms: ["HS256"], requiredClaims: ["exp"], clockTolerance })).payload;
    }
    if (alg && alg !== "HS256" && jwks) {
      return (await jwtVerify(token, jwks, { algorithms: ["RS256", "ES256", "EdDSA"], requiredClaims: ["exp"], clockTolerance })).payload;
    }
    throw new Error("no key for this algorithm");
  }

  return {
    async authenticate(request) {
      const token = bearerToken(request.headers.authorization);
      if (!token || !JWT.test(token)) throw unauthorized();
      let payload: JWTPayload;
      try {
        payload = await verify(token);
      } catch {
        // Expired, forged, wrong algorithm, malformed: the same answer for all of them.
        throw unauthorized();
      }
      const sub = typeof payload.sub === "string" && UUID.test(payload.sub) ? payload.sub.toLowerCase() : null;
      // The service-role key is an API key, not an Auth session: no `aud`, its own `iss`.
      if (payload.role === "service_role") return { userId: sub, role: payload.role, isService: true };
      if (payload.role !== "authenticated" || !sub) throw unauthorized();
      const audiences = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
      if (!audiences.includes(audience)) throw unauthorized();
      if (options.issuer !== undefined && payload.iss !== options.issuer) throw unauthorized();
      return { userId: sub, role: payload.role, isService: false };
    },
  };
}

declare module "fastify" {
  interface FastifyRequest {
    /** Set by `requireAuth` on routes that take a bearer token. */
    principal: Principal | null;
  }
}

/**
 * An `onRequest` hook: authenticate before the body is read, so an anonymous caller gets its
 * 401 without the server parsing (or buffering) anything it sent.
 */
export function requireAuth(auth: Authenticator) {
  return async (request: FastifyRequest): Promise<void> => {
    request.principal = await auth.authenticate(request);
  };
}

/** The principal `requireAuth` set; a route without the hook is a programming error. */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw new Error("route is missing the requireAuth hook");
  return request.principal;
}
