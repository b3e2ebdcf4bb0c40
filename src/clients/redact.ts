/**
 * Upstream error messages sometimes echo credentials back (OpenAI's 401 names the key it
 * received, partly masked; a URL may carry a signed token). Every message a client builds from
 * an upstream answer goes through `redact` before it reaches a `PipelineError`, and from there
 * logs and `last_error`.
 */

/** Shapes of secrets worth masking even when we do not know the exact value. */
const SECRET_PATTERNS: RegExp[] = [
  /\bsk-[A-Za-z0-9_*.-]{6,}/g, // OpenAI keys (sk-..., sk-proj-...), masked or not
  /\bllx-[A-Za-z0-9_*.-]{6,}/g, // LlamaCloud keys
  /\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/g, // JWTs (Supabase service role)
  /([?&]token=)[^&\s"]+/g, // signed-URL tokens
];

/**
 * Replace every occurrence of the given secrets, and anything shaped like a key, JWT or
 * signed-URL token, with a fixed mask.
 *
 * @example
 * redact("Incorrect API key provided: sk-abc123", ["sk-abc123"]) // "Incorrect API key provided: [redacted]"
 */
export function redact(message: string, secrets: ReadonlyArray<string | undefined> = []): string {
  let out = message;
  for (const secret of secrets) {
    // Short values would mask innocent words; real keys are long.
    if (secret && secret.length >= 8) out = out.split(secret).join("[redacted]");
  }
  for (const pattern of SECRET_PATTERNS) {
    out = out.replace(pattern, (match, prefix: unknown) => (typeof prefix === "string" && match.startsWith(prefix) ? `${prefix}[redacted]` : "[redacted]"));
  }
  return out;
}
