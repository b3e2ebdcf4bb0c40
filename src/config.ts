/**
 * Every environment variable the product reads, in one zod schema. `loadConfig()` either returns
 * a typed config or throws a `ConfigError` naming every offending variable and what it expects,
 * never its value (several are secrets). The README's configuration table mirrors this file.
 */
import { z } from "zod";
import { ConfigError } from "./errors.ts";

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max).describe(`a whole number from ${min} to ${max}`);
const url = () => z.url({ protocol: /^https?$/ }).describe("an http(s) URL");
const secret = () => z.string().min(1).describe("a non-empty secret");
const oneOf = <const T extends readonly [string, ...string[]]>(values: T) => z.enum(values).describe(`one of ${values.join(", ")}`);

export const configSchema = z.object({
  /** PostgreSQL to use; unset → an embedded PostgreSQL in a temporary directory. */
  DATABASE_URL: z.url({ protocol: /^postgres(ql)?$/ }).optional(),
  /** The worker's LISTEN connection (default DATABASE_URL): a direct or session-mode URL, since
   * LISTEN does not work through Supavisor's transaction mode. */
  DATABASE_LISTEN_URL: z.url({ protocol: /^postgres(ql)?$/ }).optional(),
  /** OTLP/HTTP endpoint (e.g. http://localhost:4318) for traces; unset → tracing off. */
  OTEL_EXPORTER_OTLP_ENDPOINT: url().optional(),
  /** `true`: the API may start on its own private embedded PostgreSQL (no worker can see it). */
  ALLOW_PRIVATE_DATABASE: oneOf(["true", "false"]).default("false"),
  /** `container`: the tests use testcontainers (needs a Docker engine). */
  TEST_DB: oneOf(["embedded", "container"]).optional(),

  OPENAI_API_KEY: secret(),
  OPENAI_BASE_URL: url().default("https://api.openai.com/v1"),
  LLAMA_CLOUD_API_KEY: secret(),
  LLAMA_CLOUD_BASE_URL: url().default("https://api.cloud.llamaindex.ai"),
  SUPABASE_URL: url(),
  SUPABASE_SERVICE_ROLE_KEY: secret(),
  /** Verifies users' bearer JWTs in the API (HS256). */
  SUPABASE_JWT_SECRET: z.string().min(32).optional(),
  STORAGE_BUCKET: z
    .string()
    .regex(/^[a-z0-9][a-z0-9._-]{1,62}$/)
    .default("documents"),
  /** Public base URL of the API; LlamaParse posts to `${WEBHOOK_BASE_URL}/webhooks/llamaparse`. */
  WEBHOOK_BASE_URL: url(),

  EMBED_MODEL: oneOf(["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]).default("text-embedding-3-small"),
  EMBED_DIMENSIONS: int(1, 3072).optional(),
  /** Inputs per embeddings request (the API allows 2048; the pipeline caps at 256). */
  EMBED_BATCH_SIZE: int(1, 256).default(256),
  /**
   * `true`: bulk jobs (lane `bulk`, `priority: "bulk"`) embed through the OpenAI Batch API at half
   * the price and outside the synchronous RPM/TPM budget; `false`: like interactive ones.
   */
  EMBED_BULK_VIA_BATCH_API: oneOf(["true", "false"]).default("true"),
  /** Longest wait between two polls of a submitted batch (the wait doubles from 1 s up to this). */
  EMBED_BATCH_POLL_MAX_SECONDS: int(1, 3_600).default(300),
  /** OpenAI budget this deployment may use: the ceiling for the whole fleet (the key's reported limits may lower it). */
  OPENAI_RPM: int(1, 1_000_000).default(3_000),
  OPENAI_TPM: int(1, 100_000_000).default(1_000_000),
  /** LlamaParse submissions per minute this deployment may make (paced by the same governor). */
  LLAMA_CLOUD_RPM: int(1, 1_000_000).default(600),
  /** `shared`: one budget per key for the whole fleet, in Postgres; `local`: each process its own. */
  RATE_GOVERNOR: oneOf(["shared", "local"]).default("shared"),

  /** The chunker's limits: 64 ≤ max ≤ 8191 (one embedding input), overlap ≤ max / 2. */
  CHUNK_MAX_TOKENS: int(64, 8191).default(512),
  CHUNK_OVERLAP_TOKENS: int(0, 4095).default(64),

  WORKER_ID: z.string().min(1).max(200).optional(),
  WORKER_CONCURRENCY: int(1, 256).default(4),
  LEASE_SECONDS: int(5, 3600).default(60),
  MAX_ATTEMPTS: int(1, 100).default(5),
  /** Backoff: full jitter over min(cap, base · 2^attempt). */
  RETRY_BASE_MS: int(1, 3_600_000).default(1_000),
  RETRY_MAX_MS: int(1, 86_400_000).default(300_000),
  /** Idle polling interval when no NOTIFY arrives. */
  POLL_INTERVAL_MS: int(10, 600_000).default(2_000),
  /** How long a parse_queued job waits for its webhook before the reconciler polls LlamaParse. */
  // A delivery lost to an outage of ours (a Postgres restart answers LlamaParse's three tries
  // within 3 s with 5xx) costs the document this long: measured, 120 s held every document of the
  // postgres-restart scenario for two minutes. One GET per in-flight parse per 30 s is cheap.
  WEBHOOK_DEADLINE_SECONDS: int(1, 86_400).default(30),
  /** How long a parse may take from its submission before the job ends in failed_parse. */
  PARSE_DEADLINE_SECONDS: int(1, 7 * 86_400).default(3_600),
  /** A parse some of whose pages failed: `fail` the job (naming the pages) or `accept` the rest. */
  PARTIAL_PARSE: oneOf(["fail", "accept"]).default("fail"),
  SHUTDOWN_TIMEOUT_MS: int(100, 600_000).default(30_000),
  /**
   * Per-service call timeouts: no call waits longer (a hung connection becomes a transient
   * `timeout`, which the breaker counts). Uploads of a large file to LlamaParse are the slowest call.
   */
  OPENAI_TIMEOUT_MS: int(100, 600_000).default(60_000),
  LLAMAPARSE_TIMEOUT_MS: int(100, 600_000).default(60_000),
  STORAGE_TIMEOUT_MS: int(100, 600_000).default(60_000),
  /**
   * A stage that makes no progress (no transition, no committed batch) for this long is
   * aborted and its lease handed back: longer than any one step (a call's timeout, a rate-limit wait).
   */
  STAGE_DEADLINE_SECONDS: int(5, 86_400).default(300),
  /** PostgreSQL: connecting, one statement, and a transaction left idle each give up after these. */
  PG_CONNECT_TIMEOUT_MS: int(100, 600_000).default(10_000),
  PG_STATEMENT_TIMEOUT_MS: int(100, 3_600_000).default(60_000),
  PG_IDLE_IN_TRANSACTION_TIMEOUT_MS: int(100, 3_600_000).default(60_000),
  /** The claim and the transition as named prepared statements; `auto`: off on port 6543 (a transaction pooler). */
  DATABASE_PREPARED_STATEMENTS: oneOf(["auto", "on", "off"]).default("auto"),

  PORT: int(1, 65_535).default(8080),
  /** The worker serves its own `GET /metrics` (breaker states, job runs) here when set. */
  METRICS_PORT: int(1, 65_535).optional(),
  /** Interface the API listens on (`0.0.0.0`: every interface, as in a container). */
  HOST: z.string().min(1).describe("an interface address such as 0.0.0.0 or 127.0.0.1").default("0.0.0.0"),
  /** Optional JWKS of the Supabase project (asymmetric signing keys); HS256 tokens still use SUPABASE_JWT_SECRET. */
  SUPABASE_JWKS_URL: url().optional(),
  /** The `aud` a user's access token must carry (Supabase Auth issues `authenticated`). */
  SUPABASE_JWT_AUDIENCE: z.string().min(1).describe("the audience of users' access tokens, e.g. authenticated").default("authenticated"),
  /** When set, the `iss` a user's access token must carry (`https://<ref>.supabase.co/auth/v1`). */
  SUPABASE_JWT_ISSUER: z.string().min(1).describe("the issuer of users' access tokens, e.g. https://<ref>.supabase.co/auth/v1").optional(),
  /** When set, `GET /metrics` on the API and the worker answers only `Authorization: Bearer <METRICS_TOKEN>`. */
  METRICS_TOKEN: z.string().min(16).optional(),
  /** Largest LlamaParse webhook body the API reads; a real one is a few hundred bytes. */
  WEBHOOK_MAX_BYTES: int(256, 1024 * 1024).default(64 * 1024),
  UPLOAD_MAX_BYTES: int(1, 5 * 1024 ** 3).default(50 * 1024 * 1024),
  UPLOAD_ALLOWED_MIME: z
    .string()
    .default("application/pdf,text/plain,text/markdown,application/vnd.openxmlformats-officedocument.wordprocessingml.document,text/html")
    .transform((s) =>
      s
        .split(",")
        .map((m) => m.trim())
        .filter(Boolean),
    ),

  LOG_LEVEL: oneOf(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
});

export type Config = z.infer<typeof configSchema>;

/** What each variable expects, for error messages (never the value: some are secrets). */
const EXPECTS: Partial<Record<keyof Config, string>> = {
  DATABASE_URL: "a postgres:// or postgresql:// connection URL, or unset for the embedded PostgreSQL",
  DATABASE_LISTEN_URL:
    "a postgres:// or postgresql:// URL of a direct or session-mode connection (LISTEN does not work in transaction mode), or unset to use DATABASE_URL",
  OPENAI_API_KEY: "your OpenAI API key (required)",
  LLAMA_CLOUD_API_KEY: "your LlamaCloud API key (required)",
  SUPABASE_URL: "your Supabase project URL, e.g. https://xyz.supabase.co (required)",
  SUPABASE_SERVICE_ROLE_KEY: "the project's service-role key (required)",
  SUPABASE_JWT_SECRET: "the project's JWT secret, at least 32 characters",
  WEBHOOK_BASE_URL: "the public http(s) base URL of this API, which LlamaParse calls back (required)",
  STORAGE_BUCKET: "a bucket name: lower-case letters, digits, '.', '_' or '-'",
  METRICS_TOKEN: "a secret of at least 16 characters that Prometheus sends as a bearer token",
};

/** Parse `env` (default `process.env`); throws `ConfigError` listing every problem at once. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  // Empty strings count as unset, as in most dotenv setups.
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ""));
  const result = configSchema.safeParse(cleaned);
  if (result.success) {
    const c = result.data;
    if (c.CHUNK_OVERLAP_TOKENS * 2 > c.CHUNK_MAX_TOKENS) {
      throw new ConfigError([`CHUNK_OVERLAP_TOKENS: is invalid; expected at most half of CHUNK_MAX_TOKENS (${c.CHUNK_MAX_TOKENS})`]);
    }
    return c;
  }
  const problems = result.error.issues.map((issue) => {
    const key = String(issue.path[0]) as keyof Config;
    const missing = cleaned[key] === undefined;
    const expects = EXPECTS[key] ?? describe(key) ?? issue.message;
    return `${key}: ${missing ? "is not set" : "is invalid"}; expected ${expects}`;
  });
  throw new ConfigError([...new Set(problems)]);
}

function describe(key: keyof Config): string | undefined {
  let schema: z.ZodType | undefined = configSchema.shape[key];
  // Walk through .default()/.optional() wrappers to the described inner schema.
  while (schema && !schema.description && "unwrap" in schema) schema = (schema as { unwrap(): z.ZodType }).unwrap();
  return schema?.description;
}

/** Config for the worker/API against the local mocks (the scenario runner and tests use it). */
export function configForLocalMocks(mockBaseUrl: string, overrides: Record<string, string | undefined> = {}): Config {
  return loadConfig({
    OPENAI_API_KEY: "sk-local-mock",
    OPENAI_BASE_URL: `${mockBaseUrl}/v1`,
    LLAMA_CLOUD_API_KEY: "llx-local-mock",
    LLAMA_CLOUD_BASE_URL: mockBaseUrl,
    SUPABASE_URL: mockBaseUrl,
    SUPABASE_SERVICE_ROLE_KEY: "local-mock-service-role",
    WEBHOOK_BASE_URL: "http://127.0.0.1:8080",
    LOG_LEVEL: "silent",
    ...overrides,
  });
}

/**
 * For entry points (`npm run worker`, `npm run api`): on bad configuration print one clear
 * message naming every offending variable, and exit 2. No stack trace: it is a user mistake.
 */
export function loadConfigOrExit(program: string, env: Record<string, string | undefined> = process.env): Config {
  try {
    return loadConfig(env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${program}: ${err.message}\nSee the configuration table in README.md.\n`);
    process.exit(2);
  }
}
