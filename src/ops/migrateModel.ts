/**
 * `npm run migrate-model -- plan|start|status|cutover|abort`: change the embedding model (or the
 * chunker's settings) without downtime, for operators. See the README's "Model migration".
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import {
  abortMigration,
  cutover,
  MigrationRefused,
  type MigrationPlan,
  migrationStatus,
  planMigration,
  requireActive,
  startMigration,
} from "../profiles/migration.ts";
import { parseProfileSpec, type Profile } from "../profiles/profiles.ts";
import { operatorPool, runCli, UsageError } from "./cli.ts";

export const MIGRATE_USAGE = `usage:
  npm run migrate-model -- plan  --to <id> --model <model> [--dimensions N] [--chunk-max-tokens N] [--chunk-overlap-tokens N] [--chunker-version V] [--embed-version V]
  npm run migrate-model -- plan  --to <profile.json>      the same profile as a file: {"id", "embedding": {"model", "dimensions"}, "chunker": {…}}
  npm run migrate-model -- start --to …                    queue the re-embedding (bulk lane); prints the plan first
  npm run migrate-model -- status                          progress and cost so far
  npm run migrate-model -- cutover [--force]               search and GET /jobs switch to the target in one transaction
  npm run migrate-model -- abort                           drop the target's jobs and data; the active profile is untouched`;

const FLAGS = {
  to: { type: "string" },
  model: { type: "string" },
  dimensions: { type: "string" },
  "chunk-max-tokens": { type: "string" },
  "chunk-overlap-tokens": { type: "string" },
  "chunker-version": { type: "string" },
  "embed-version": { type: "string" },
  force: { type: "boolean" },
} as const;

type Values = { [K in keyof typeof FLAGS]?: (typeof FLAGS)[K]["type"] extends "boolean" ? boolean : string };

/** A whole-number flag, or a UsageError naming it. */
function intFlag(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`--${flag} takes a whole number (got '${value}')`);
  return Number(value);
}

/** The target profile as written: `--to <file.json>`'s content, or `--to <id>` and the flags. */
function targetSpec(values: Values): unknown {
  if (!values.to) throw new UsageError("--to is needed: a new profile's id (with --model …) or a profile JSON file");
  let spec: unknown;
  if (values.to.endsWith(".json")) {
    const given = Object.keys(values).filter((k) => k !== "to" && k !== "force" && values[k as keyof Values] !== undefined);
    if (given.length > 0) throw new UsageError(`--to ${values.to} is a profile file: give the settings in it, not as --${given[0]}`);
    try {
      spec = JSON.parse(readFileSync(values.to, "utf8"));
    } catch (err) {
      throw new UsageError(`--to ${values.to}: ${(err as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : `not JSON (${(err as Error).message})`}`);
    }
  } else {
    if (!values.model)
      throw new UsageError("--model is needed (text-embedding-3-small, text-embedding-3-large or text-embedding-ada-002), or --to <profile.json>");
    const chunker = {
      ...(values["chunker-version"] !== undefined ? { version: values["chunker-version"] } : {}),
      ...(values["chunk-max-tokens"] !== undefined ? { max_tokens: intFlag("chunk-max-tokens", values["chunk-max-tokens"]) } : {}),
      ...(values["chunk-overlap-tokens"] !== undefined ? { overlap_tokens: intFlag("chunk-overlap-tokens", values["chunk-overlap-tokens"]) } : {}),
    };
    spec = {
      id: values.to,
      chunker,
      embedding: {
        model: values.model,
        ...(values.dimensions !== undefined ? { dimensions: intFlag("dimensions", values.dimensions) } : {}),
        ...(values["embed-version"] !== undefined ? { version: values["embed-version"] } : {}),
      },
    };
  }
  return spec;
}

/** The target profile validated; chunker settings left out are the active profile's. */
function targetProfile(spec: unknown, active: Profile): Omit<Profile, "role"> {
  const parsed = parseProfileSpec(spec, active);
  if (!parsed.ok) throw new UsageError(`the target profile is invalid:\n  ${parsed.errors.join("\n  ")}`);
  return parsed.profile;
}

const describe = (p: Omit<Profile, "role">) =>
  `${p.profileId} (${p.chunkerName} ${p.chunkerVersion} ${p.chunkMaxTokens}/${p.chunkOverlapTokens} tokens, ${p.embedModel} at ${p.embedDimensions} dimensions)`;
const usd = (n: number) => `$${n.toFixed(6)}`;

export function formatPlan(plan: MigrationPlan): string[] {
  const approx = plan.estimated ? "≈ " : "";
  return [
    `active: ${describe(plan.active)}`,
    `target: ${describe(plan.target)}`,
    `documents: ${plan.documents}  chunks: ${approx}${plan.chunks}  tokens: ${approx}${plan.tokens}  (${plan.rechunk ? "re-chunks: the target's chunker has no stored chunks" : "embeds the stored chunks: no re-chunking"})`,
    `estimated cost: ${usd(plan.costUsd.synchronous)} at the synchronous price, ${usd(plan.costUsd.batch)} through the Batch API`,
  ];
}

export async function migrateModelMain(argv: string[], env: NodeJS.ProcessEnv = process.env, out: (line: string) => void = console.log): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: FLAGS });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (rest.length > 0) throw new UsageError(`unexpected argument '${rest[0]}'`);
  if (command !== "plan" && command !== "start" && command !== "status" && command !== "cutover" && command !== "abort") {
    throw new UsageError(command === undefined ? "a command is needed: plan, start, status, cutover or abort" : `unknown command '${command}'`);
  }
  const profileFlag = Object.keys(values).find((k) => k !== "force" && values[k as keyof Values] !== undefined);
  if (command !== "plan" && command !== "start" && profileFlag) {
    throw new UsageError(`${command} takes no --${profileFlag}: it acts on the migration in progress`);
  }
  if (values.force && command !== "cutover") throw new UsageError("--force is only for cutover");
  const spec = command === "plan" || command === "start" ? targetSpec(values) : undefined;
  const pool = operatorPool("npm run migrate-model", env);
  try {
    if (command === "plan") {
      const target = targetProfile(spec, (await requireActive(pool)).active);
      for (const line of formatPlan(await planMigration(pool, target))) out(line);
    } else if (command === "start") {
      const target = targetProfile(spec, (await requireActive(pool)).active);
      const { plan, queued } = await startMigration(pool, target);
      for (const line of formatPlan(plan)) out(line);
      out(`started: ${queued} documents queued in the bulk lane for ${plan.target.profileId}`);
    } else if (command === "status") {
      const s = await migrationStatus(pool);
      out(`active: ${describe(s.active)}`);
      if (!s.target) {
        out("no migration in progress");
      } else {
        out(`target: ${describe(s.target)}`);
        out(`progress: ${s.complete} of ${s.documents} documents complete; jobs ${JSON.stringify(s.jobs)}; not queued yet: ${s.missing}`);
        out(`so far: ${s.tokens} tokens, ${usd(s.costUsd)} billed`);
        out(s.complete >= s.documents ? "ready: npm run migrate-model -- cutover" : "not ready for cutover yet");
      }
    } else if (command === "cutover") {
      const r = await cutover(pool, { force: values.force ?? false });
      out(
        `cut over: ${r.from} → ${r.to}${r.incomplete > 0 ? ` (forced: ${r.incomplete} documents not yet in ${r.to})` : ""}; ${r.from} is retired, its data kept`,
      );
    } else {
      const r = await abortMigration(pool);
      out(`aborted: ${r.profile} removed with ${r.jobs} jobs, ${r.vectors} vectors and ${r.chunks} chunks only it used; the active profile is untouched`);
    }
    return 0;
  } catch (err) {
    if (err instanceof MigrationRefused) {
      out(`refused (${err.code}): ${err.message}`);
      return 1;
    }
    throw err;
  } finally {
    await pool.end();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runCli("npm run migrate-model", MIGRATE_USAGE, () => migrateModelMain(process.argv.slice(2)));
}
