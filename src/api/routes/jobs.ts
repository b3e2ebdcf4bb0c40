/**
 * `GET /jobs/{document_id}`: the job's state, live progress, errors, cost and timeline.
 * `POST /jobs/{document_id}/retry`: the operator's way out of a dead letter.
 *
 * Both answer 404 for a document the caller may not see (someone else's), exactly as for one
 * that does not exist, so ids cannot be probed.
 */
import type { FastifyInstance } from "fastify";
import type pg from "pg";
import { PipelineError } from "../../errors.ts";
import { jobId as makeJobId } from "../../ids.ts";
import { isFailed, PIPELINE_STATES, type FailedState, type JobStatus, type PipelineState } from "../../state-machine/table.ts";
import { retryFailedJob } from "../../state-machine/retry.ts";
import { principalOf, requireAuth, type Principal } from "../auth.ts";
import { ApiError, notFound, parseOr400 } from "../errors.ts";
import { DocumentParams } from "../documents.ts";

/** The timeline is capped; a job's events number in the tens even with retries. */
const TIMELINE_LIMIT = 1000;

/** Which states belong to which user-visible stage (the failed state each one lands in). */
const STAGES: ReadonlyArray<{ stage: "parse" | "chunking" | "embedding"; states: readonly PipelineState[]; failed: FailedState }> = [
  { stage: "parse", states: ["uploaded", "parse_queued", "parsed"], failed: "failed_parse" },
  { stage: "chunking", states: ["parse_validated", "chunking"], failed: "failed_chunking" },
  { stage: "embedding", states: ["chunks_stored", "embedding_queued", "embedding_in_progress", "embeddings_stored"], failed: "failed_embedding" },
];

interface StatusRow {
  document_id: string;
  filename: string;
  mime: string;
  bytes: string;
  uploaded_at: Date;
  job_id: string | null;
  status: JobStatus | null;
  progress: Record<string, unknown> | null;
  attempts: number | null;
  max_attempts: number | null;
  next_attempt_at: Date | null;
  last_error: Record<string, unknown> | null;
  correlation_id: string | null;
  created_at: Date | null;
  updated_at: Date | null;
  leased: boolean | null;
  chunks_stored: string;
  vectors_stored: string;
  /** The active embedding profile, whose chunks and vectors are counted (null before a worker's first start). */
  profile_id: string | null;
}

export async function jobRoutes(app: FastifyInstance): Promise<void> {
  const { pool, auth } = app.deps;

  app.get("/jobs/:document_id", { onRequest: requireAuth(auth) }, async (request, reply) => {
    const who = principalOf(request);
    const { document_id: docId } = parseOr400(DocumentParams, request.params, "path");
    const row = await loadStatus(pool, docId, who);
    if (!row) throw notFound(`Document ${docId}`);
    const events = row.job_id ? await loadTimeline(pool, row.job_id) : [];
    return reply.send(statusBody(row, events, who.isService));
  });

  app.post("/jobs/:document_id/retry", { onRequest: requireAuth(auth) }, async (request, reply) => {
    const who = principalOf(request);
    const { document_id: docId } = parseOr400(DocumentParams, request.params, "path");
    const row = await loadStatus(pool, docId, who);
    if (!row) throw notFound(`Document ${docId}`);
    if (!row.job_id || !row.status) {
      throw new ApiError(409, "no_job", "This document has no job yet: finish the upload (POST /upload/{document_id}/finalize) first.");
    }
    let retried;
    try {
      retried = await retryFailedJob(pool, { jobId: row.job_id, status: row.status, lastError: row.last_error }, who.isService ? "service_role" : "owner");
    } catch (err) {
      if (err instanceof PipelineError && err.code === "not_failed") throw new ApiError(409, err.code, err.message);
      if (err instanceof PipelineError && err.code === "conflict")
        throw new ApiError(409, err.code, `${err.message.slice(0, -1)}; GET /jobs/{document_id} to see its state.`);
      throw err;
    }
    const { from, to } = retried;
    request.log.info({ job_id: row.job_id, from, to }, "operator retry");
    return reply.send({ document_id: docId, job_id: row.job_id, status: to, retried_from: from, attempts: 0 });
  });
}

async function loadStatus(pool: pg.Pool, documentId: string, who: Principal): Promise<StatusRow | undefined> {
  const { rows } = await pool.query<StatusRow>(
    `SELECT d.document_id, d.filename, d.mime, d.bytes, d.created_at AS uploaded_at,
            j.job_id, j.status, j.progress, j.attempts, j.max_attempts, j.next_attempt_at, j.last_error,
            j.correlation_id, j.created_at, j.updated_at, (j.lease_expires_at > now()) AS leased,
            (SELECT count(*) FROM upload_pipeline.document_chunk_buffer c
              WHERE c.document_id = d.document_id AND (p.profile_id IS NULL OR (c.chunker_name, c.chunker_version) = (p.chunker_name, p.chunker_version))) AS chunks_stored,
            (SELECT count(*) FROM upload_pipeline.document_vector_buffer v
               JOIN upload_pipeline.document_chunk_buffer c ON c.chunk_id = v.chunk_id
              WHERE c.document_id = d.document_id
                AND (p.profile_id IS NULL OR ((c.chunker_name, c.chunker_version) = (p.chunker_name, p.chunker_version)
                                              AND (v.embed_model, v.embed_version) = (p.embed_model, p.embed_version)))) AS vectors_stored,
            p.profile_id
       FROM upload_pipeline.documents d
       LEFT JOIN upload_pipeline.upload_jobs j ON j.document_id = d.document_id AND j.profile_id IS NULL
       -- The active profile's chunks and vectors (migration 0011): a cutover switches what this reports.
       LEFT JOIN upload_pipeline.embedding_profiles p ON p.role = 'active'
      WHERE d.document_id = $1 AND ($2::boolean OR d.user_id = $3::uuid)`,
    [documentId, who.isService, who.userId],
  );
  return rows[0];
}

interface EventRow {
  id: string;
  from_status: string | null;
  to_status: string;
  at: Date;
  attempt: number;
  worker_id: string | null;
  detail: Record<string, unknown>;
}

async function loadTimeline(pool: pg.Pool, jobId: string): Promise<EventRow[]> {
  const { rows } = await pool.query<EventRow>(
    `SELECT id, from_status, to_status, at, attempt, worker_id, detail
       FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id LIMIT $2`,
    [jobId, TIMELINE_LIMIT],
  );
  return rows;
}

const num = (v: unknown): number =>
  typeof v === "number" && Number.isFinite(v) ? v : typeof v === "string" && v.trim() !== "" && Number.isFinite(Number(v)) ? Number(v) : 0;
const percent = (done: number, total: number, finished: boolean): number =>
  total > 0 ? Math.min(100, Math.round((done / total) * 1000) / 10) : finished ? 100 : 0;

/**
 * The body of `GET /jobs/{document_id}`; see src/api/README.md for an example. The timeline's
 * `worker_id` (host:pid of a worker) and raw event `detail` are operators' business: only the
 * service role gets them.
 */
export function statusBody(row: StatusRow, events: EventRow[], operator: boolean) {
  const status = row.status;
  const p = row.progress ?? {};
  const position = status && !isFailed(status) ? PIPELINE_STATES.indexOf(status) : -1;
  const stages = STAGES.map(({ stage, states, failed }) => {
    let state: "pending" | "in_progress" | "done" | "failed";
    if (status === failed) state = "failed";
    else if (status && isFailed(status)) {
      // Another stage failed: this one is done if it comes before the failed one.
      const failedIndex = STAGES.findIndex((s) => s.failed === status);
      state = STAGES.findIndex((s) => s.stage === stage) < failedIndex ? "done" : "pending";
    } else if (position < 0) state = "pending";
    else if (position > PIPELINE_STATES.indexOf(states[states.length - 1]!)) state = "done";
    else if (position >= PIPELINE_STATES.indexOf(states[0]!)) state = "in_progress";
    else state = "pending";
    return { stage, state };
  });
  const stageState = (name: string) => stages.find((s) => s.stage === name)!.state;
  const chunksStored = Number(row.chunks_stored);
  const vectorsStored = Number(row.vectors_stored);
  const chunksTotal = num(p.chunks_total);
  const vectorsTotal = num(p.vectors_total);
  return {
    document_id: row.document_id,
    job_id: row.job_id ?? makeJobId(row.document_id),
    /** null: the signed upload has not been finalized yet. */
    status,
    document: { filename: row.filename, mime: row.mime, bytes: Number(row.bytes), uploaded_at: row.uploaded_at },
    attempts: row.attempts ?? 0,
    max_attempts: row.max_attempts,
    next_attempt_at: row.next_attempt_at,
    leased: row.leased ?? false,
    last_error: row.last_error,
    progress: {
      stages,
      /** Pages LlamaParse could not parse (PARTIAL_PARSE decides whether the job went on without them). */
      parse: { failed_pages: Array.isArray(p.parse_failed_pages) ? p.parse_failed_pages.map(num) : [], pages_total: num(p.parse_pages_total) },
      chunks: { stored: chunksStored, total: chunksTotal, percent: percent(chunksStored, chunksTotal, stageState("chunking") === "done") },
      vectors: { stored: vectorsStored, total: vectorsTotal, percent: percent(vectorsStored, vectorsTotal, stageState("embedding") === "done") },
      batches_done: num(p.batches_done),
    },
    /** The embedding profile that serves search; chunks and vectors above are counted in it. */
    profile: row.profile_id,
    cost: { tokens: num(p.tokens), cost_usd: num(p.cost_usd) },
    correlation_id: row.correlation_id,
    created_at: row.created_at,
    updated_at: row.updated_at,
    timeline: events.map((e) => ({
      id: Number(e.id),
      from: e.from_status,
      to: e.to_status,
      at: e.at,
      attempt: e.attempt,
      actor: typeof e.detail?.actor === "string" ? e.detail.actor : null,
      ...(operator ? { worker_id: e.worker_id, detail: e.detail } : {}),
    })),
  };
}
