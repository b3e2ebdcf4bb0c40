/**
 * The scenario invariants of SPEC §8, checked over a quiescent database and the mocks' stats.
 *
 * @example
 * const report = await checkInvariants(pool, {
 *   documentIds, expected, reference,
 *   expectedEmbedding: (m, text, d) => mockEmbedding(m, text, d),
 *   embed: { model: "text-embedding-3-small", version: "1", dimensions: 256 },
 *   mockUsage: { promptTokensByModel: { "text-embedding-3-small": stats.openai.usage["text-embedding-3-small"]?.prompt_tokens ?? 0 } },
 *   crashesHappened: kills > 0,
 * });
 * if (!report.ok) for (const c of report.checks.filter((c) => !c.ok)) console.error(c.name, c.violations);
 */
import { CHUNKER_NAME, CHUNKER_VERSION } from "../../src/chunking/markdownChunker.ts";
import { checkDocumentBuffers, newBufferChecks, type DocumentCounts } from "./checks/buffers.ts";
import { checkBulkJobsAtBatchPrice, checkOneBatchPerIntent } from "./checks/batches.ts";
import { checkCounters, checkTokensAndCost } from "./checks/counters.ts";
import { checkEventPaths, checkNoOverlappingLeases } from "./checks/events.ts";
import { checkNoLostDocuments, checkTerminalStates } from "./checks/jobs.ts";
import { loadDocumentIds, loadEvents, loadJobs, type Db } from "./queries.ts";
import type { InvariantInput, InvariantReport } from "./types.ts";

export { fingerprint, type FingerprintOptions } from "./fingerprint.ts";
export { compareFingerprints, compareVector } from "./checks/buffers.ts";
export * from "./types.ts";

/** The check names in report order (the runner and the tests refer to them). */
export const CHECK_NAMES = [
  "jobs_terminal_as_expected",
  "no_lost_documents",
  "no_duplicate_or_missing_rows",
  "ids_and_hashes_deterministic",
  "matches_reference_run",
  "vectors_match_mock",
  "counters_match_buffers",
  "tokens_and_cost_match_usage",
  "event_paths_valid",
  "no_overlapping_leases",
  "one_openai_batch_per_intent",
  "bulk_jobs_billed_at_batch_price",
] as const;
export type CheckName = (typeof CHECK_NAMES)[number];

/**
 * Run every invariant and return one result per check (never throws for a violation; throws
 * only when the database cannot be read). Covers every job and document in the database plus
 * every uploaded id, so a row nobody expected is reported too.
 */
export async function checkInvariants(db: Db, input: InvariantInput): Promise<InvariantReport> {
  const chunker = input.chunker ?? { name: CHUNKER_NAME, version: CHUNKER_VERSION };
  const [allJobs, storedDocs, events] = await Promise.all([loadJobs(db), loadDocumentIds(db), loadEvents(db)]);
  const jobs = input.profile ? allJobs.filter((j) => j.profile_id === input.profile!.jobs) : allJobs;
  const statusOf = new Map(jobs.map((j) => [j.document_id, j.status]));

  const buffers = newBufferChecks();
  if (!input.reference) buffers.reference.note = "no reference run given: skipped";
  const counts = new Map<string, DocumentCounts>();
  for (const documentId of new Set([...input.documentIds, ...storedDocs])) {
    counts.set(documentId, await checkDocumentBuffers(db, { documentId, status: statusOf.get(documentId) ?? null }, input, chunker, buffers));
  }

  const checks = [
    checkTerminalStates(jobs, input),
    checkNoLostDocuments(jobs, storedDocs, input),
    buffers.duplicates,
    buffers.ids,
    buffers.reference,
    buffers.vectors,
    checkCounters(jobs, counts),
    checkTokensAndCost(jobs, input),
    checkEventPaths(jobs, events),
    checkNoOverlappingLeases(jobs, events),
    await checkOneBatchPerIntent(db, input),
    await checkBulkJobsAtBatchPrice(db, input),
  ].map((v) => v.result());
  return { ok: checks.every((c) => c.ok), checks };
}
