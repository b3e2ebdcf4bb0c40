/**
 * `npm run scenario -- init [dir]`: a starter scenario and env file, with comments, for a team's
 * own documents and settings. Never overwrites a file.
 */
import { access, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";

export const STARTER_SCENARIO = `// A starter scenario: run it with
//   npm run scenario -- my-scenario.json --env-file scenario.env
// Lines starting with // are comments. Every field but name and description has a default;
// the format is in harness/README.md.
{
  "name": "my-scenario",
  "description": "Our documents through a worker crash, flaky embeddings and duplicated webhooks.",
  // Same seed, same corpus, faults and kills: a failing run comes back with its seed.
  "seed": 1,
  "corpus": {
    // Seeded synthetic markdown documents; set to 0 to upload only your own files.
    "documents": 4,
    // Your own files (PDF, DOCX, HTML, Markdown, text): a folder or a glob, relative to this file.
    // "files": "./samples",
    "minKiB": 2,
    "maxKiB": 24
  },
  "workers": { "processes": 2, "slots": 2 },
  // Settings for this scenario only (the env file holds the ones you deploy).
  "workerEnv": {},
  // The mocks' fault plan (mocks/README.md): here a fifth of the embedding requests fail once.
  "faults": {
    "openai": { "bursts": [{ "fault": 503, "start": 1, "count": 1, "rate": 0.2 }] },
    "webhooks": { "duplicate": { "rate": 0.3 } }
  },
  // Kill the worker holding the first document's job right after its first batch of vectors commits.
  "crashes": [{ "document": 0, "at": "commit.vectors.after" }],
  "deadlineMs": 120000
}
`;

export const STARTER_ENV = `# The worker and API settings you deploy; npm run scenario -- --env-file scenario.env runs every
# scenario with them (a scenario's own workerEnv still wins). Checked by the worker's config
# schema before anything starts. Database, service URLs and keys are wired by the runner and
# ignored here. The variables are in the README's configuration table.

# The embedding model and its output size.
EMBED_MODEL=text-embedding-3-small
# EMBED_DIMENSIONS=1536
# Inputs per embeddings request (1-256).
EMBED_BATCH_SIZE=256
# Chunk size and overlap in cl100k tokens.
CHUNK_MAX_TOKENS=512
CHUNK_OVERLAP_TOKENS=64
# Attempts per stage before the dead letter.
MAX_ATTEMPTS=5
# The request and token budget per minute of your OpenAI account.
OPENAI_RPM=3000
OPENAI_TPM=1000000
# Job slots per worker process.
WORKER_CONCURRENCY=4
`;

export class StarterExistsError extends Error {
  override name = "StarterExistsError";
}

/** Writes my-scenario.json and scenario.env into `dir`; refuses when either exists. */
export async function writeStarter(dir: string): Promise<string[]> {
  const files = [join(dir, "my-scenario.json"), join(dir, "scenario.env")];
  for (const file of files) {
    const exists = await access(file).then(
      () => true,
      () => false,
    );
    if (exists) throw new StarterExistsError(`${file} already exists; remove it or run init in another folder`);
  }
  await mkdir(dir, { recursive: true });
  await writeFile(files[0]!, STARTER_SCENARIO);
  await writeFile(files[1]!, STARTER_ENV);
  return files;
}
