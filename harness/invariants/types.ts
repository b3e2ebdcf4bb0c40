/**
 * The invariant checker's input and output (SPEC §8). Plain data in and out: the report is
 * JSON as it stands, so the runner writes it into `summary.json` without conversion.
 */
import type { FailedState } from "../../src/state-machine/table.ts";

/** What a scenario expects a document to end as. */
export type ExpectedOutcome = "complete" | FailedState;

/**
 * The reproducible identity of a document's buffers: chunk ids, `chunk_sha` and `vector_sha`
 * in `chunk_ord` order. Two runs over the same corpus must produce equal fingerprints, whatever
 * crashed in between (SPEC §8.2).
 */
export interface Fingerprint {
  chunkIds: string[];
  chunkShas: string[];
  vectorShas: string[];
}

/**
 * The mock's deterministic embedding of `input` (pass `expectedEmbedding` from
 * `mocks/openai/embeddings.ts`; the harness never imports a mock itself).
 */
export type ExpectedEmbeddingFn = (model: string, input: string, dimensions: number) => Float32Array | readonly number[];

export interface InvariantInput {
  /** Every document id the scenario uploaded (the API's answers). */
  documentIds: readonly string[];
  /** Expected terminal state per document; documents not listed expect `defaultExpected`. */
  expected?: ReadonlyMap<string, ExpectedOutcome>;
  /** Defaults to `"complete"`. */
  defaultExpected?: ExpectedOutcome;
  /**
   * Fingerprints from a crash-free reference run of the same corpus (see `fingerprint()`).
   * Compared for every `complete` document that has an entry; without it the check is skipped.
   */
  reference?: ReadonlyMap<string, Fingerprint>;
  expectedEmbedding: ExpectedEmbeddingFn;
  embed: { model: string; version: string; dimensions: number };
  /** Defaults to the production chunker (`CHUNKER_NAME`, `CHUNKER_VERSION`). */
  chunker?: { name: string; version: string };
  /** From the OpenAI mock's stats: `usage[model].prompt_tokens` by model. */
  mockUsage: {
    promptTokensByModel: Record<string, number>;
    /** `batchUsage[model].prompt_tokens`: tokens billed through the Batch API (half price). */
    batchPromptTokensByModel?: Record<string, number>;
  };
  /**
   * Whether any worker was killed during the run. A kill between an embeddings call and the
   * commit of its batch legitimately spends the tokens twice, so the job counters may then be
   * below the mock's usage; without crashes they must be equal.
   */
  crashesHappened: boolean;
  /**
   * An embedding profile's pass (migration 0011): only the jobs with this `profile_id` (null: the
   * uploads' own jobs) are checked; vectors and billed tokens of `otherEmbeds` (the run's other
   * profiles, checked in their own pass) are not this pass's concern. Unset: every job, one model.
   */
  profile?: { jobs: string | null; otherEmbeds: Array<{ model: string; version: string }> };
  /** The Batch API lane: whether it is on (EMBED_BULK_VIA_BATCH_API) and how many batches the OpenAI mock created. */
  batchApi?: { lane: boolean; batchesCreated: number };
  /** Largest allowed |stored − expected| per component; 0 would demand float32 equality. Default 1e-6. */
  vectorTolerance?: number;
}

/** One named invariant and what broke it. */
export interface CheckResult {
  /** Stable machine name, e.g. `vectors_match_mock`. */
  name: string;
  /** The SPEC §8 item it implements. */
  spec: string;
  ok: boolean;
  /** One line per violation naming the row (job, document, chunk, event ids); capped at `MAX_VIOLATIONS`. */
  violations: string[];
  /** Violations found, including those left out of `violations`. */
  violationCount: number;
  /** Why a check did not run or what it covered (e.g. "no reference run given"). */
  note?: string;
}

export interface InvariantReport {
  ok: boolean;
  checks: CheckResult[];
}

/** Cap per check: a broken run should name its rows, not print a million lines. */
export const MAX_VIOLATIONS = 50;
