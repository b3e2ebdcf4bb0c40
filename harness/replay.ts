/**
 * What makes two runs "the same run": the fault log (every injected fault, keyed by what the
 * request was, as sorted lines) and a digest of the final database (documents, their end
 * states, chunk ids and hashes, vector hashes). Same seed → the same both; `--replay` compares.
 */
import { createHash } from "node:crypto";
import type pg from "pg";
import { faultLogLines, type FaultLogEntry } from "../mocks/index.ts";
import { fingerprint } from "./invariants/index.ts";

/** The reproducible record of one run, as summary.json keeps it. */
export interface ReplayRecord {
  /** SHA-256 of the sorted fault-log lines. */
  faultLogDigest: string;
  /** How many faults were injected. */
  faults: number;
  /** SHA-256 over every document's end state, last error code, chunk ids and hashes and vector hashes. */
  databaseDigest: string;
}

const sha = (text: string) => createHash("sha256").update(text).digest("hex");

export function faultLogDigest(log: readonly FaultLogEntry[]): { lines: string[]; digest: string } {
  const lines = faultLogLines(log);
  return { lines, digest: sha(lines.join("\n")) };
}

/**
 * A digest of what the run left in the database that must not depend on timing: per document
 * (in id order) its job's final status and error code, its chunks and vectors. Attempts, times,
 * worker ids and event paths are left out: they depend on OS scheduling.
 */
export async function databaseDigest(pool: pg.Pool, documentIds: readonly string[]): Promise<string> {
  const ids = [...documentIds].sort();
  const { rows } = await pool.query<{ document_id: string; status: string; code: string | null; parsed_sha256: string | null }>(
    `SELECT j.document_id, j.status, j.last_error->>'code' AS code, d.parsed_sha256
       FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d USING (document_id)
      WHERE j.document_id = ANY($1::uuid[]) ORDER BY j.document_id`,
    [ids],
  );
  const prints = await fingerprint(pool, ids);
  const hash = createHash("sha256");
  for (const row of rows) {
    const fp = prints.get(row.document_id);
    hash.update(JSON.stringify([row.document_id, row.status, row.code, row.parsed_sha256, fp?.chunkIds, fp?.chunkShas, fp?.vectorShas]));
    hash.update("\n");
  }
  return hash.digest("hex");
}

/** What differs between a recorded run and its replay (empty: reproduced exactly). */
export function replayDifferences(recorded: ReplayRecord, replayed: ReplayRecord): string[] {
  const out: string[] = [];
  if (recorded.faultLogDigest !== replayed.faultLogDigest) out.push(`fault log differs (${recorded.faults} faults recorded, ${replayed.faults} now)`);
  if (recorded.databaseDigest !== replayed.databaseDigest) out.push("final database differs");
  return out;
}
