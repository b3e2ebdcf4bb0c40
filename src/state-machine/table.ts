/**
 * The state machine, SPEC §4: the single source of truth for every state, every allowed edge
 * and who may take it. `transition()` refuses anything not listed here; the migrations' status
 * CHECK, the scenario runner's coverage and its event-path invariant all read this table.
 */

export const PIPELINE_STATES = [
  "uploaded",
  "parse_queued",
  "parsed",
  "parse_validated",
  "chunking",
  "chunks_stored",
  "embedding_queued",
  "embedding_in_progress",
  "embeddings_stored",
  "complete",
] as const;

export const FAILED_STATES = ["failed_parse", "failed_chunking", "failed_embedding"] as const;

export const ALL_STATES = [...PIPELINE_STATES, ...FAILED_STATES] as const;

export type PipelineState = (typeof PIPELINE_STATES)[number];
export type FailedState = (typeof FAILED_STATES)[number];
export type JobStatus = (typeof ALL_STATES)[number];

/**
 * Who takes an edge:
 * - `worker`: a `BaseWorker` slot holding the job's lease (every write fenced by its token);
 * - `webhook`: the API's LlamaParse webhook handler (no lease; fenced by expected state);
 * - `reconciler`: the worker's poll of LlamaParse for jobs whose webhook never came (leased);
 * - `operator`: `POST /jobs/{id}/retry` (no lease; from a failed state only);
 * - `api`: the upload API, which creates the job once the file is stored.
 * Migration jobs (one per document and target profile) are created by the operator or a worker.
 */
export type Actor = "api" | "worker" | "webhook" | "reconciler" | "operator";

export interface Edge {
  from: JobStatus | null;
  to: JobStatus;
  actors: readonly Actor[];
  kind: "create" | "forward" | "failure" | "retry";
}

/** The failed state a job lands in when it fails (permanently, or out of attempts) from `from`. */
export const FAILURE_OF: Readonly<Record<Exclude<PipelineState, "complete">, FailedState>> = {
  uploaded: "failed_parse",
  parse_queued: "failed_parse",
  parsed: "failed_parse",
  parse_validated: "failed_chunking",
  chunking: "failed_chunking",
  chunks_stored: "failed_embedding",
  embedding_queued: "failed_embedding",
  embedding_in_progress: "failed_embedding",
  embeddings_stored: "failed_embedding",
};

const FORWARD: ReadonlyArray<[PipelineState, PipelineState, readonly Actor[]]> = [
  ["uploaded", "parse_queued", ["worker"]],
  ["parse_queued", "parsed", ["webhook", "reconciler"]],
  ["parsed", "parse_validated", ["worker"]],
  ["parse_validated", "chunking", ["worker"]],
  ["chunking", "chunks_stored", ["worker"]],
  ["chunks_stored", "embedding_queued", ["worker"]],
  ["embedding_queued", "embedding_in_progress", ["worker"]],
  ["embedding_in_progress", "embeddings_stored", ["worker"]],
  ["embeddings_stored", "complete", ["worker"]],
];

/** Each pipeline state's forward successor (`uploaded → parse_queued`, …, `embeddings_stored → complete`). */
export const NEXT_STATE: Readonly<Partial<Record<JobStatus, PipelineState>>> = Object.fromEntries(FORWARD.map(([from, to]) => [from, to]));

export const EDGES: readonly Edge[] = [
  { from: null, to: "uploaded", actors: ["api"], kind: "create" },
  // A model migration's job for one document and one profile (src/profiles/): created by the
  // operator's `migrate-model start`, or by the worker finishing an upload during a migration,
  // where the profile's chunks are already stored, or where they must be chunked anew.
  { from: null, to: "chunks_stored", actors: ["operator", "worker"], kind: "create" },
  { from: null, to: "parse_validated", actors: ["operator", "worker"], kind: "create" },
  ...FORWARD.map(([from, to, actors]): Edge => ({ from, to, actors, kind: "forward" })),
  // Dead letter: a permanent error or exhausted attempts. LlamaParse reporting FAILED is seen
  // by the webhook handler or the reconciler, so they may fail a parse_queued job too.
  ...Object.entries(FAILURE_OF).map(
    ([from, to]): Edge => ({
      from: from as PipelineState,
      to,
      actors: from === "parse_queued" ? ["worker", "webhook", "reconciler"] : ["worker"],
      kind: "failure",
    }),
  ),
  // Manual retry: back to the state the job failed from (the last successful one; every stage
  // resumes from what the buffers already hold). A failed parse goes back to `uploaded` only:
  // retrying re-parses (a new LlamaParse job), since polling the old one fails the same way.
  ...Object.entries(FAILURE_OF)
    .filter(([back, failed]) => failed !== "failed_parse" || back === "uploaded")
    .map(
      ([back, failed]): Edge => ({
        from: failed,
        to: back as PipelineState,
        actors: ["operator"],
        kind: "retry",
      }),
    ),
];

const EDGE_INDEX = new Map(EDGES.map((e) => [`${e.from ?? ""}->${e.to}`, e]));

export function findEdge(from: JobStatus | null, to: JobStatus): Edge | undefined {
  return EDGE_INDEX.get(`${from ?? ""}->${to}`);
}

export function isTerminal(status: JobStatus): boolean {
  return status === "complete" || isFailed(status);
}

export function isFailed(status: JobStatus): status is FailedState {
  return (FAILED_STATES as readonly string[]).includes(status);
}

export function isJobStatus(value: string): value is JobStatus {
  return (ALL_STATES as readonly string[]).includes(value);
}

/** States a worker claims and acts on (everything not terminal). */
export const ACTIONABLE_STATES: readonly PipelineState[] = PIPELINE_STATES.filter((s) => s !== "complete");
