/**
 * The scenario corpus: deterministic markdown documents generated from the seed, so the same
 * scenario always uploads the same bytes (and a reference run can be compared row for row).
 */
import { existsSync, globSync, readdirSync, readFileSync, statSync, type Dirent } from "node:fs";
import { basename, extname, join } from "node:path";
import { mulberry32, type Rng } from "../mocks/shared/rng.ts";
import type { Scenario } from "./scenario.ts";
import { deterministicId } from "../src/ids.ts";
import type { Lane } from "../src/scheduling/lanes.ts";

export type CorpusKind = "document" | "large" | "poison" | "empty" | "reupload" | "file";

/** The MIME type each supported extension of `corpus.files` is uploaded as. */
export const FILE_TYPES: Record<string, string> = {
  ".pdf": "application/pdf",
  ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
  ".html": "text/html",
  ".htm": "text/html",
  ".md": "text/markdown",
  ".markdown": "text/markdown",
  ".txt": "text/plain",
};

/** A `corpus.files` that names no usable file (a user mistake, refused before anything starts). */
export class CorpusFilesError extends Error {
  override name = "CorpusFilesError";
}

/**
 * The files of `corpus.files`, sorted: every supported file under a folder (recursively), or
 * every match of a glob. Nothing found, or a file of a type the pipeline does not take, is an
 * error naming the files and the supported extensions.
 */
export function listCorpusFiles(pattern: string): string[] {
  let paths: string[];
  if (existsSync(pattern) && statSync(pattern).isDirectory()) {
    paths = (readdirSync(pattern, { recursive: true, withFileTypes: true }) as Dirent[])
      .filter((d) => d.isFile() && !d.name.startsWith(".") && d.name !== "README.md")
      .map((d) => join(d.parentPath, d.name));
  } else {
    paths = globSync(pattern).filter((p) => statSync(p).isFile());
  }
  const supported = Object.keys(FILE_TYPES).join(", ");
  if (paths.length === 0) throw new CorpusFilesError(`corpus.files: ${pattern} matches no file (give a folder or a glob of ${supported} files)`);
  const unsupported = paths.filter((p) => !FILE_TYPES[extname(p).toLowerCase()]);
  if (unsupported.length > 0)
    throw new CorpusFilesError(
      `corpus.files: ${unsupported.slice(0, 5).join(", ")} ${unsupported.length > 1 ? "are" : "is"} not of a supported type (${supported})`,
    );
  return paths.sort();
}

export interface CorpusFile {
  kind: CorpusKind;
  userId: string;
  /** Set for the files of a tenant wave (`corpus.tenants`). */
  tenant?: string | undefined;
  priority?: Lane | undefined;
  filename: string;
  mime: string;
  bytes: Uint8Array;
}

/** The vocabulary of generated documents (benchmarks reuse it). */
export const WORDS = (
  "ingest parse chunk embed vector lease fence retry backoff jitter breaker webhook signature " +
  "postgres queue worker stage batch token budget window replay duplicate crash resume state " +
  "document section heading paragraph sentence markdown storage bucket object upload signed " +
  "model dimension cosine index latency throughput invariant coverage scenario seed fault plan"
).split(" ");

/** A seeded sentence of 6–19 words. */
export function sentence(rng: Rng): string {
  const n = 6 + Math.floor(rng() * 14);
  const words = Array.from({ length: n }, () => WORDS[Math.floor(rng() * WORDS.length)]!);
  return `${words[0]![0]!.toUpperCase()}${words.join(" ").slice(1)}.`;
}

/** A markdown document of about `bytes` bytes: headings, paragraphs, lists and a code fence. */
export function markdownDocument(rng: Rng, title: string, bytes: number): string {
  const parts: string[] = [`# ${title}`];
  let size = parts[0]!.length;
  let section = 0;
  while (size < bytes) {
    section += 1;
    const block: string[] = [`## Section ${section}`];
    const paragraphs = 1 + Math.floor(rng() * 4);
    for (let p = 0; p < paragraphs; p++) {
      if (rng() < 0.2) block.push(`### Detail ${section}.${p + 1}`);
      block.push(Array.from({ length: 2 + Math.floor(rng() * 6) }, () => sentence(rng)).join(" "));
    }
    if (rng() < 0.3) block.push(Array.from({ length: 3 }, () => `- ${sentence(rng)}`).join("\n"));
    if (rng() < 0.15) block.push("```ts\nconst lease = await claimNextJob(pool);\nawait heartbeat(lease);\n```");
    const text = block.join("\n\n");
    parts.push(text);
    size += text.length + 2;
  }
  return `${parts.join("\n\n")}\n`;
}

/** The files a scenario uploads, in upload order. */
export function buildCorpus(scenario: Scenario): CorpusFile[] {
  const rng = mulberry32(scenario.seed);
  const c = scenario.corpus;
  const users = Array.from({ length: 3 }, (_, i) => deterministicId("scenario-user", scenario.seed, i));
  const user = () => users[Math.floor(rng() * users.length)]!;
  const encode = (text: string) => new TextEncoder().encode(text);
  const files: CorpusFile[] = [];
  for (let i = 0; i < c.documents; i++) {
    const kib = c.minKiB + rng() * (c.maxKiB - c.minKiB);
    files.push({
      kind: "document",
      userId: user(),
      filename: `doc-${i}.md`,
      mime: "text/markdown",
      bytes: encode(markdownDocument(rng, `Document ${i}`, kib * 1024)),
    });
  }
  for (let i = 0; i < c.large.count; i++) {
    files.push({
      kind: "large",
      userId: user(),
      filename: `large-${i}.md`,
      mime: "text/markdown",
      bytes: encode(markdownDocument(rng, `Large document ${i}`, c.large.kib * 1024)),
    });
  }
  for (let i = 0; i < c.poison; i++) {
    files.push({
      kind: "poison",
      userId: user(),
      filename: `poison-${i}.md`,
      mime: "text/markdown",
      bytes: encode(`# Poison ${i}\n\n%%POISON%% ${sentence(rng)}\n`),
    });
  }
  for (let i = 0; i < c.empty; i++) {
    files.push({ kind: "empty", userId: user(), filename: `empty-${i}.txt`, mime: "text/plain", bytes: encode(`   \n\n\t\n${" ".repeat(i)}\n`) });
  }
  // The team's own files after the synthetic ones, so adding them never changes the seeded corpus.
  for (const path of c.files ? listCorpusFiles(c.files) : []) {
    files.push({
      kind: "file",
      userId: user(),
      filename: basename(path),
      mime: FILE_TYPES[extname(path).toLowerCase()]!,
      bytes: new Uint8Array(readFileSync(path)),
    });
  }
  const originals = files.filter((f) => f.kind === "document");
  for (let i = 0; i < c.reuploads && originals.length > 0; i++) {
    const original = originals[i % originals.length]!;
    files.push({ ...original, kind: "reupload" });
  }
  return files;
}

/** The tenant waves of `corpus.tenants`, in upload order: one list of files per wave. */
export function buildTenantWaves(scenario: Scenario): CorpusFile[][] {
  const rng = mulberry32(scenario.seed ^ 0x7e4a47);
  return scenario.corpus.tenants.map((wave) => {
    const userId = deterministicId("scenario-tenant", scenario.seed, wave.name);
    return Array.from({ length: wave.documents }, (_, i) => ({
      kind: "document" as const,
      userId,
      tenant: wave.name,
      priority: wave.priority,
      filename: `${wave.name}-${i}.md`,
      mime: "text/markdown",
      bytes: new TextEncoder().encode(markdownDocument(rng, `Tenant ${wave.name} document ${i}`, wave.kib * 1024)),
    }));
  });
}
