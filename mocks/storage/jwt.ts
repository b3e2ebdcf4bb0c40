/**
 * The JWTs Supabase Storage works with: API keys (`role: service_role` / `anon`) and the tokens
 * inside signed URLs, all HS256 with the project's JWT secret.
 */
import { errors, jwtVerify, SignJWT, type JWTPayload } from "jose";

/** The Supabase CLI's local JWT secret (`supabase start`), the mock's default. */
export const DEFAULT_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

/** The expiry the Supabase CLI gives its demo keys (2032-11-12). */
const DEMO_KEY_EXPIRY = 1983812996;

const keyOf = (secret: string) => new TextEncoder().encode(secret);

/**
 * Signs an API key the way the Supabase CLI does: `{iss: "supabase-demo", role, exp}`, HS256.
 * With the default secret and role this is byte for byte the CLI's well-known local
 * service-role key.
 * @example const key = await signServiceRoleKey(); // eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3Mi…
 */
export async function signServiceRoleKey(
  secret: string = DEFAULT_JWT_SECRET,
  options: { role?: "service_role" | "anon"; expiresAt?: number } = {},
): Promise<string> {
  return new SignJWT({ iss: "supabase-demo", role: options.role ?? "service_role" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setExpirationTime(options.expiresAt ?? DEMO_KEY_EXPIRY)
    .sign(keyOf(secret));
}

/** Signs a signed-URL token (`{url: "bucket/path", …claims}`) valid for `expiresIn` seconds. */
export async function signUrlToken(secret: string, claims: Record<string, unknown>, expiresIn: number, nowSeconds: number): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuedAt(nowSeconds)
    .setExpirationTime(nowSeconds + expiresIn)
    .sign(keyOf(secret));
}

/** Verifies an HS256 token; on failure gives the message the storage server uses. */
export async function verifyToken(
  secret: string,
  token: string,
  nowSeconds: number,
): Promise<{ ok: true; payload: JWTPayload } | { ok: false; message: string }> {
  try {
    const { payload } = await jwtVerify(token, keyOf(secret), { algorithms: ["HS256"], currentDate: new Date(nowSeconds * 1000) });
    return { ok: true, payload };
  } catch (error) {
    if (error instanceof errors.JWTExpired) return { ok: false, message: "jwt expired" };
    if (error instanceof errors.JWSSignatureVerificationFailed) return { ok: false, message: "invalid signature" };
    if (error instanceof errors.JOSEAlgNotAllowed) return { ok: false, message: "invalid algorithm" };
    return { ok: false, message: "jwt malformed" };
  }
}
