/**
 * `--env-file <file>`: the worker and API settings a team deploys, applied under every scenario's
 * own `workerEnv` (a scenario's setting is its subject and wins), validated by the worker's config
 * schema before anything starts. Values are never printed: some are secrets.
 */
import { readFile } from "node:fs/promises";
import { configForLocalMocks } from "../src/config.ts";
import { ConfigError } from "../src/errors.ts";
import { RUNNER_WIRED, SETTABLE_WORKER_ENV, type Scenario } from "./scenario.ts";

export class EnvFileError extends Error {
  constructor(file: string, problems: string[]) {
    super(`${file}: invalid env file:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "EnvFileError";
  }
}

/** `KEY=value` lines (`export ` allowed, `#` comments, values optionally in single or double quotes). */
export function parseEnvText(text: string, file: string): Record<string, string> {
  const env: Record<string, string> = {};
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) {
      problems.push(`line ${i + 1}: not KEY=value`);
      return;
    }
    const value = m[2]!.replace(/\s+#.*$/, "");
    env[m[1]!] = /^(["']).*\1$/.test(value) ? value.slice(1, -1) : value;
  });
  if (problems.length > 0) throw new EnvFileError(file, problems);
  return env;
}

/**
 * Reads and checks an env file: every variable must be a worker setting (the ones the runner
 * wires itself — database, service URLs and keys — are set aside and named), and the values must
 * pass the worker's own config schema.
 */
export async function loadEnvFile(file: string): Promise<{ env: Record<string, string>; ignored: string[] }> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new EnvFileError(file, [`not readable: ${(err as Error).message}`]);
  }
  const all = parseEnvText(text, file);
  const ignored = Object.keys(all).filter((k) => RUNNER_WIRED.has(k));
  const unknown = Object.keys(all).filter((k) => !RUNNER_WIRED.has(k) && !SETTABLE_WORKER_ENV.includes(k));
  const problems = unknown.map((k) => `${k}: not a worker or API setting; valid: ${SETTABLE_WORKER_ENV.join(", ")}`);
  const env = Object.fromEntries(Object.entries(all).filter(([k]) => SETTABLE_WORKER_ENV.includes(k)));
  try {
    configForLocalMocks("http://127.0.0.1:9", env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    problems.push(...err.problems);
  }
  if (problems.length > 0) throw new EnvFileError(file, problems);
  return { env, ignored };
}

/** The env file's settings under a scenario's own `workerEnv` (a scenario's setting is its subject and wins). */
export function withEnvFile(scenario: Scenario, envFile: { env: Record<string, string> } | undefined): Scenario {
  return envFile ? { ...scenario, workerEnv: { ...envFile.env, ...scenario.workerEnv } } : scenario;
}
