/**
 * Parse intake, `parse_queued → parsed`: the one place that fetches LlamaParse's markdown and
 * stores it at `{user_id}/parsed/{document_id}.md`. Called by the API's webhook handler (actor
 * `webhook`, no lease) and by the worker's reconciler (actor `reconciler`, leased) for jobs whose
 * webhook never came. Both may race on one job: the object write is an idempotent upsert of
 * deterministic content, and only one fenced transition wins; the other changes nothing.
 */
import type pg from "pg";
import { pageMarker } from "../chunking/markdownChunker.ts";
import type { LlamaParseClient } from "../clients/llamaparse.ts";
import type { ObjectStorage } from "../clients/storage.ts";
import { PipelineError, TransitionConflict } from "../errors.ts";
import { withTransaction } from "../db/transaction.ts";
import { sha256 } from "../ids.ts";
import type { Logger } from "../logger.ts";
import { transition, type Fence } from "../state-machine/transition.ts";
import type { Stage } from "../worker/stage.ts";
import { NO_FAULTS, type FaultPoints } from "../worker/faultPoints.ts";
import { parsedPath, type PipelineServices } from "./services.ts";

export type ParseIntakeResult =
  /** Markdown stored, job moved to `parsed`. */
  | { outcome: "parsed"; parsedPath: string; parsedSha256: string }
  /** LlamaParse reported FAILED/CANCELLED: job moved to `failed_parse`. */
  | { outcome: "failed"; message: string }
  /** LlamaParse is still working: nothing changed. */
  | { outcome: "pending" }
  /** The job is no longer `parse_queued`, or someone else moved it first: nothing changed. */
  | { outcome: "not_applicable"; status: string };

export interface ParseIntakeDeps {
  pool: pg.Pool;
  log: Logger;
  storage: ObjectStorage;
  llamaparse: LlamaParseClient;
  faults?: FaultPoints;
}

interface IntakeJob {
  status: string;
  parse_job_id: string | null;
  attempts: number;
  user_id: string;
  document_id: string;
}

export async function ingestParseResult(
  deps: ParseIntakeDeps,
  args: { jobId: string; actor: "webhook" | "reconciler"; fence: Fence; now?: Date | undefined; signal?: AbortSignal },
): Promise<ParseIntakeResult> {
  const faults = deps.faults ?? NO_FAULTS;
  const { rows } = await deps.pool.query<IntakeJob>(
    `SELECT j.status, j.parse_job_id, j.attempts, d.user_id, d.document_id
       FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d USING (document_id) WHERE j.job_id = $1`,
    [args.jobId],
  );
  const job = rows[0];
  if (!job || job.status !== "parse_queued" || !job.parse_job_id) return { outcome: "not_applicable", status: job?.status ?? "missing" };

  await faults.hit("call.llamaparse.get.before", { jobId: args.jobId });
  const parse = await deps.llamaparse.getParseJob(job.parse_job_id, { expand: ["markdown"] }, args.signal);
  await faults.hit("call.llamaparse.get.after", { jobId: args.jobId });

  if (parse.status === "PENDING" || parse.status === "RUNNING") return { outcome: "pending" };
  if (parse.status === "FAILED" || parse.status === "CANCELLED") {
    const message = `LlamaParse reported ${parse.status}${parse.errorMessage ? `: ${parse.errorMessage}` : ""}`;
    try {
      await transition(deps.pool, {
        jobId: args.jobId,
        from: "parse_queued",
        to: "failed_parse",
        actor: args.actor,
        fence: args.fence,
        now: args.now,
        attempt: job.attempts,
        lastError: { class: "permanent", code: "llamaparse_failed", message, stage: "parse_queued", attempt: job.attempts },
        releaseLease: true,
        detail: { parse_status: parse.status },
      });
    } catch (err) {
      return raced(err, "failed_parse");
    }
    return { outcome: "failed", message };
  }

  // COMPLETED: pages in order, each opened by its page marker so chunks know their page.
  const markdown = parse.pages.map((p) => `${pageMarker(p.pageNumber)}\n\n${p.markdown}`).join("\n\n");
  const path = parsedPath(job.user_id, job.document_id);
  const markdownSha = sha256(markdown);
  await faults.hit("call.storage.upload.before", { jobId: args.jobId });
  await deps.storage.upload(path, markdown, "text/markdown; charset=utf-8", { upsert: true });
  await faults.hit("call.storage.upload.after", { jobId: args.jobId });

  // The document's paths and the transition commit together, or not at all.
  try {
    await withTransaction(deps.pool, async (client) => {
      await client.query("UPDATE upload_pipeline.documents SET parsed_path = $2, parsed_sha256 = $3 WHERE document_id = $1", [
        job.document_id,
        path,
        markdownSha,
      ]);
      await faults.hit("commit.parsed.before", { jobId: args.jobId });
      await transition(client, {
        jobId: args.jobId,
        from: "parse_queued",
        to: "parsed",
        actor: args.actor,
        fence: args.fence,
        now: args.now,
        attempt: job.attempts,
        // The reconciler goes on to validate in the same claim: that is its first attempt.
        setAttempts: args.fence.kind === "lease" ? 1 : 0,
        detail: { parse_job_id: job.parse_job_id, pages: parse.pages.length },
      });
    });
  } catch (err) {
    return raced(err, "parsed");
  }
  await faults.hit("commit.parsed.after", { jobId: args.jobId });
  deps.log.info({ job_id: args.jobId, actor: args.actor, pages: parse.pages.length }, "parse result stored");
  return { outcome: "parsed", parsedPath: path, parsedSha256: markdownSha };
}

/** Another writer (webhook vs reconciler) moved the job first: not an error for an unleased writer. */
function raced(err: unknown, to: string): ParseIntakeResult {
  if (err instanceof TransitionConflict) return { outcome: "not_applicable", status: `raced to ${to}` };
  throw err;
}

/**
 * The reconciler: a parse_queued job comes due when its webhook deadline passes without a
 * webhook. Poll LlamaParse: store the result, fail the job, or look again later.
 */
export const reconcileParse: Stage<PipelineServices> = {
  name: "reconcile_parse",
  handles: ["parse_queued"],
  async run(ctx) {
    const result = await ingestParseResult(
      { pool: ctx.pool, log: ctx.log, storage: ctx.services.storage, llamaparse: ctx.services.llamaparse, faults: ctx.faults },
      { jobId: ctx.job.job_id, actor: "reconciler", fence: { kind: "lease", token: ctx.job.lease_token, workerId: ctx.workerId }, now: ctx.now(), signal: ctx.signal },
    );
    if (result.outcome === "pending") return { next: "snooze", delayMs: ctx.services.settings.reconcilePollMs, reason: "LlamaParse still parsing" };
    if (result.outcome === "not_applicable") throw new PipelineError("intake_not_applicable", "transient", `job is ${result.status}`);
    // Moved by a statement outside ctx.transition: keep the context's view in step (validate,
    // next in this same run, reads `parsed_path` from it). A failed job is terminal (and
    // released), which ends the worker's run of this job.
    if (result.outcome === "parsed") {
      ctx.job.parsed_path = result.parsedPath;
      ctx.job.parsed_sha256 = result.parsedSha256;
    }
    (ctx.job as { status: string }).status = result.outcome === "parsed" ? "parsed" : "failed_parse";
    ctx.job.attempts = 1;
  },
};
