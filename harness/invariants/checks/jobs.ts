/**
 * SPEC §8.1 and the "no lost documents" half of §8.2: every job terminal and where the
 * scenario expects it; every uploaded document present with its job, and nothing else present.
 */
import { isJobStatus, isTerminal } from "../../../src/state-machine/table.ts";
import { Violations } from "../collector.ts";
import type { JobRow } from "../queries.ts";
import type { InvariantInput } from "../types.ts";

export function checkTerminalStates(jobs: readonly JobRow[], input: InvariantInput): Violations {
  const v = new Violations("jobs_terminal_as_expected", "§8.1");
  for (const job of jobs) {
    const where = `job ${job.job_id} (document ${job.document_id})`;
    if (!isJobStatus(job.status) || !isTerminal(job.status)) {
      v.add(`${where} is stuck in non-terminal state ${job.status}`);
      continue;
    }
    const expected = input.expected?.get(job.document_id) ?? input.defaultExpected ?? "complete";
    if (job.status !== expected) v.add(`${where} ended in ${job.status}, expected ${expected}`);
  }
  return v;
}

export function checkNoLostDocuments(jobs: readonly JobRow[], storedDocumentIds: readonly string[], input: InvariantInput): Violations {
  const v = new Violations("no_lost_documents", "§8.2");
  const stored = new Set(storedDocumentIds);
  const uploaded = new Set(input.documentIds);
  const withJob = new Set(jobs.map((j) => j.document_id));
  for (const id of uploaded) {
    if (!stored.has(id)) v.add(`document ${id} was uploaded but has no documents row`);
    else if (!withJob.has(id)) v.add(`document ${id} was uploaded but has no upload_jobs row`);
  }
  for (const id of stored) {
    // A row nobody uploaded means ids are not deterministic or something wrote behind the API.
    if (!uploaded.has(id)) v.add(`document ${id} is in the database but the scenario never uploaded it`);
  }
  for (const id of input.expected?.keys() ?? []) {
    if (!uploaded.has(id)) v.add(`the scenario expects an outcome for document ${id}, which it never uploaded`);
  }
  return v;
}
