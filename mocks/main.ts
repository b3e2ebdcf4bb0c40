/**
 * `npm run mocks -- [flags]`: serves the mocks over HTTP and prints the environment to give the
 * worker and the API. Flags:
 *
 *   --port <n>               port (default 4010; 0 picks a free one)
 *   --host <addr>            interface (default 127.0.0.1)
 *   --seed <int>             seed for every draw (default 1)
 *   --faults <file.json>     initial fault plan (see mocks/README.md)
 *   --webhook-base-url <url> deliver webhooks to this origin instead of the registered one
 *   --bucket <name>          a bucket that exists from the start (repeatable; default documents)
 *   --bucket-max-bytes <n>   those buckets' file_size_limit (default none; set UPLOAD_MAX_BYTES)
 *   --bucket-mime <a,b,…>    those buckets' allowed_mime_types (default any; set UPLOAD_ALLOWED_MIME)
 *   --help                   this text
 *
 * The JWT secret comes from SUPABASE_JWT_SECRET (default: the Supabase CLI's local secret).
 * Exit codes: 0 on SIGINT/SIGTERM, 2 on a bad flag or fault plan.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { FaultPlanError, parseFaultPlan, type FaultPlanInput } from "./shared/faults.ts";
import { startMockServer } from "./server.ts";

const USAGE = `usage: npm run mocks -- [--port 4010] [--host 127.0.0.1] [--seed 1] [--faults plan.json] [--webhook-base-url http://127.0.0.1:3000] [--bucket documents]... [--bucket-max-bytes n] [--bucket-mime a,b]`;

class UsageError extends Error {}

function integer(flag: string, value: string | undefined, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^-?\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(`--${flag} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

function parse(argv: string[]) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        port: { type: "string" },
        host: { type: "string" },
        seed: { type: "string" },
        faults: { type: "string" },
        "webhook-base-url": { type: "string" },
        bucket: { type: "string", multiple: true },
        "bucket-max-bytes": { type: "string" },
        "bucket-mime": { type: "string" },
        help: { type: "boolean" },
      },
    }));
  } catch (error) {
    // parseArgs' messages name the flag ("Unknown option '--prot'"); keep them, drop the stack.
    throw new UsageError((error as Error).message);
  }
  if (values.help) return { help: true as const };
  let faults: FaultPlanInput | undefined;
  if (values.faults !== undefined) {
    let text: string;
    try {
      text = readFileSync(values.faults, "utf8");
    } catch (error) {
      throw new UsageError(`--faults: cannot read ${values.faults}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
    try {
      faults = parseFaultPlan(JSON.parse(text));
    } catch (error) {
      if (error instanceof FaultPlanError) throw new UsageError(`--faults: ${error.message}`);
      throw new UsageError(`--faults: ${values.faults} is not valid JSON`);
    }
  }
  const base = values["webhook-base-url"];
  if (base !== undefined) {
    let ok = false;
    try {
      ok = ["http:", "https:"].includes(new URL(base).protocol);
    } catch {
      ok = false;
    }
    if (!ok) throw new UsageError(`--webhook-base-url must be an http(s) URL, got ${JSON.stringify(base)}`);
  }
  for (const bucket of values.bucket ?? []) {
    if (!/^[A-Za-z0-9_.-]{1,63}$/.test(bucket)) throw new UsageError(`--bucket must be 1-63 letters, digits, '_', '.', '-', got ${JSON.stringify(bucket)}`);
  }
  if (values.host !== undefined && values.host.trim() === "") throw new UsageError("--host must not be empty");
  const mimes = values["bucket-mime"]
    ?.split(",")
    .map((m) => m.trim())
    .filter(Boolean);
  if (mimes && (mimes.length === 0 || !mimes.every((m) => /^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+*-]+$/i.test(m)))) {
    throw new UsageError(
      `--bucket-mime must be comma-separated MIME types such as application/pdf,text/markdown, got ${JSON.stringify(values["bucket-mime"])}`,
    );
  }
  return {
    help: false as const,
    port: integer("port", values.port, 0, 65535, 4010),
    host: values.host ?? "127.0.0.1",
    seed: integer("seed", values.seed, -2147483648, 4294967295, 1),
    faults,
    webhookBaseUrl: base,
    buckets: values.bucket,
    bucketLimits: {
      fileSizeLimit: values["bucket-max-bytes"] === undefined ? null : integer("bucket-max-bytes", values["bucket-max-bytes"], 1, 5 * 1024 ** 3, 0),
      allowedMimeTypes: mimes ?? null,
    },
  };
}

async function main(): Promise<void> {
  let args;
  try {
    args = parse(process.argv.slice(2));
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`mocks: ${error.message}\n${USAGE}\n`);
      process.exit(2);
    }
    throw error;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  let server;
  try {
    server = await startMockServer({ ...args, jwtSecret: process.env.SUPABASE_JWT_SECRET || undefined });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    process.stderr.write(`mocks: cannot listen on ${args.host}:${args.port}: ${code ?? (error as Error).message}\n`);
    process.exit(code === "EADDRINUSE" || code === "EACCES" ? 2 : 1);
  }
  process.stderr.write(`mocks: serving OpenAI, LlamaParse and Supabase Storage on ${server.baseUrl} (seed ${args.seed}); admin at ${server.urls.admin}\n`);
  for (const [name, value] of Object.entries(server.env)) process.stdout.write(`${name}=${value}\n`);
  let stopping = false;
  const stop = () => {
    if (stopping) process.exit(1);
    stopping = true;
    void server.close().then(() => process.exit(0));
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

await main();
