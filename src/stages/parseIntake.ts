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
import { transition } from "../state-machine/transition.ts";
import type { FencedTransaction, Stage } from "../worker/stage.ts";
import { NO_FAULTS, type FaultPoints } from "../worker/faultPoints.ts";
import { parseDeadlineLeftMs } from "./submitParse.ts";
import { parsedPath, type PipelineServices } from "./services.ts";

export type ParseIntakeResult =
  /** Markdown stored, job moved to `parsed` (`failedPages` empty unless PARTIAL_PARSE=accept let some go). */
  | { outcome: "parsed"; parsedPath: string; parsedSha256: string; failedPages: number[] }
  /** LlamaParse reported FAILED/CANCELLED, or pages failed under PARTIAL_PARSE=fail: job moved to `failed_parse`. */
  | { outcome: "failed"; message: string }
  /** LlamaParse is still working: nothing changed. */
  | { outcome: "pending" }
  /** The job is no longer `parse_queued`, or someone else moved it first: nothing changed. */
  | { outcome: "not_applicable"; status: string };

/** What to do with a parse some of whose pages LlamaParse could not parse (`PARTIAL_PARSE`). */
export type PartialParsePolicy = "fail" | "accept";

export interface ParseIntakeDeps {
  pool: pg.Pool;
  log: Logger;
  storage: ObjectStorage;
  llamaparse: LlamaParseClient;
  partialParse: PartialParsePolicy;
  faults?: FaultPoints;
}

/**
 * How intake moves the job: run `fn` in one transaction whose `transition` is the caller's
 * fenced move from `parse_queued` (the reconciler's context under its lease, or the webhook's
 * unleased move). The caller's view of the job follows the move; intake never writes it.
 */
export type IntakeMove = <T>(fn: (tx: FencedTransaction) => Promise<T>) => Promise<T>;

interface IntakeJob {
  status: string;
  parse_job_id: string | null;
  user_id: string;
  document_id: string;
}

export async function ingestParseResult(
  deps: ParseIntakeDeps,
  args: { jobId: string; move: IntakeMove; signal?: AbortSignal | undefined },
): Promise<ParseIntakeResult> {
  const faults = deps.faults ?? NO_FAULTS;
  const { rows } = await deps.pool.query<IntakeJob>(
    `SELECT j.status, j.parse_job_id, d.user_id, d.document_id
       FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d USING (document_id) WHERE j.job_id = $1`,
    [args.jobId],
  );
  const job = rows[0];
  if (job?.status !== "parse_queued" || !job.parse_job_id) return { outcome: "not_applicable", status: job?.status ?? "missing" };

  await faults.hit("call.llamaparse.get.before", { jobId: args.jobId });
  const parse = await deps.llamaparse.getParseJob(job.parse_job_id, { expand: ["markdown"] }, args.signal);
  await faults.hit("call.llamaparse.get.after", { jobId: args.jobId });

  if (parse.status === "PENDING" || parse.status === "RUNNING") return { outcome: "pending" };
  if (parse.status === "FAILED" || parse.status === "CANCELLED") {
    const message = `LlamaParse reported ${parse.status}${parse.errorMessage ? `: ${parse.errorMessage}` : ""}`;
    return failParse(args, { code: "llamaparse_failed", message }, { parse_status: parse.status });
  }

  // COMPLETED, possibly with pages LlamaParse could not parse (parse.partial_success): never
  // drop them silently. Their numbers go into `progress` either way.
  const failedPages = parse.failedPages.map((p) => p.pageNumber).sort((a, b) => a - b);
  const total = parse.pages.length + failedPages.length;
  if (failedPages.length > 0 && deps.partialParse === "fail") {
    const first = parse.failedPages.find((p) => p.pageNumber === failedPages[0])!;
    const message =
      `LlamaParse could not parse page${failedPages.length > 1 ? "s" : ""} ${failedPages.join(", ")} of ${total} (page ${first.pageNumber}: ${first.error}); ` +
      `PARTIAL_PARSE=fail keeps no partial document: set PARTIAL_PARSE=accept to keep the other pages, or retry with POST /jobs/{document_id}/retry.`;
    return failParse(
      args,
      { code: "parse_partial", message },
      { parse_status: parse.status, failed_pages: failedPages },
      { parse_failed_pages: failedPages, parse_pages_total: total },
    );
  }

  // Pages in order, each opened by its page marker so chunks know their page.
  const markdown = parse.pages.map((p) => `${pageMarker(p.pageNumber)}\n\n${p.markdown}`).join("\n\n");
  const path = parsedPath(job.user_id, job.document_id);
  const markdownSha = sha256(markdown);
  await faults.hit("call.storage.upload.before", { jobId: args.jobId });
  await deps.storage.upload(path, markdown, "text/markdown; charset=utf-8", { upsert: true });
  await faults.hit("call.storage.upload.after", { jobId: args.jobId });

  // The document's paths and the transition commit together, or not at all.
  try {
    await args.move(async (tx) => {
      await tx.client.query("UPDATE upload_pipeline.documents SET parsed_path = $2, parsed_sha256 = $3 WHERE document_id = $1", [
        job.document_id,
        path,
        markdownSha,
      ]);
      await faults.hit("commit.parsed.before", { jobId: args.jobId });
      await tx.transition("parsed", {
        progress: { parse_failed_pages: failedPages, parse_pages_total: total },
        detail: { parse_job_id: job.parse_job_id, pages: parse.pages.length, ...(failedPages.length > 0 ? { failed_pages: failedPages } : {}) },
      });
    });
  } catch (err) {
    return raced(err, "parsed");
  }
  await faults.hit("commit.parsed.after", { jobId: args.jobId });
  deps.log.info({ job_id: args.jobId, pages: parse.pages.length, failed_pages: failedPages }, "parse result stored");
  return { outcome: "parsed", parsedPath: path, parsedSha256: markdownSha, failedPages };
}

/** `parse_queued → failed_parse` with a permanent `last_error`. */
async function failParse(
  args: { move: IntakeMove },
  error: { code: string; message: string },
  detail: Record<string, unknown>,
  progress?: Record<string, unknown>,
): Promise<ParseIntakeResult> {
  try {
    await args.move((tx) =>
      tx.transition("failed_parse", {
        lastError: { class: "permanent", ...error, stage: "parse_queued" },
        releaseLease: true,
        ...(progress ? { progress } : {}),
        detail,
      }),
    );
  } catch (err) {
    return raced(err, "failed_parse");
  }
  return { outcome: "failed", message: error.message };
}

/** Another writer (webhook vs reconciler) moved the job first: not an error for an unleased writer. */
function raced(err: unknown, to: string): ParseIntakeResult {
  if (err instanceof TransitionConflict) return { outcome: "not_applicable", status: `raced to ${to}` };
  throw err;
}

/** Intake for a webhook delivery: unleased, moved only if no lease is live (SPEC §6). */
export function webhookIntake(deps: ParseIntakeDeps, jobId: string): Promise<ParseIntakeResult> {
  const move: IntakeMove = (fn) =>
    withTransaction(deps.pool, (client) =>
      fn({
        client,
        transition: async (to, { actor: _actor, ...options } = {}) => {
          await transition(client, {
            jobId,
            from: "parse_queued",
            to,
            actor: "webhook",
            fence: { kind: "unleased", by: "webhook" },
            setAttempts: 0,
            ...options,
          });
        },
      }),
    );
  return ingestParseResult(deps, { jobId, move });
}

/**
 * The reconciler: a parse_queued job comes due when its webhook deadline passes without a
 * webhook (or at PARSE_DEADLINE_SECONDS, whichever is first). Poll LlamaParse: store the result,
 * fail the job, or look again later, until the parse deadline ends it.
 */
export const reconcileParse: Stage<PipelineServices> = {
  name: "reconcile_parse",
  handles: ["parse_queued"],
  async run(ctx) {
    const { storage, llamaparse, settings } = ctx.services;
    const deps = { pool: ctx.pool, log: ctx.log, storage, llamaparse, partialParse: settings.partialParse, faults: ctx.faults };
    const move: IntakeMove = (fn) =>
      ctx.fenced((tx) => fn({ client: tx.client, transition: (to, options) => tx.transition(to, { ...options, actor: "reconciler" }) }));
    const result = await ingestParseResult(deps, { jobId: ctx.job.job_id, move, signal: ctx.signal });
    if (result.outcome === "not_applicable") throw new PipelineError("intake_not_applicable", "transient", `job is ${result.status}`);
    if (result.outcome !== "pending") return;
    const leftMs = parseDeadlineLeftMs(ctx.job, settings.parseDeadlineMs, ctx.now() ?? new Date());
    if (leftMs > 0) return { next: "snooze", delayMs: Math.min(settings.reconcilePollMs, leftMs), reason: "LlamaParse still parsing" };
    const minutes = Math.round(settings.parseDeadlineMs / 60_000);
    await ctx.transition("failed_parse", {
      actor: "reconciler",
      lastError: {
        class: "permanent",
        code: "parse_deadline_exceeded",
        message:
          `LlamaParse job ${ctx.job.parse_job_id} did not finish within PARSE_DEADLINE_SECONDS (${settings.parseDeadlineMs / 1000} s${minutes >= 1 ? `, ~${minutes} min` : ""}) ` +
          `of its submission; retry with POST /jobs/{document_id}/retry to submit a new parse.`,
        stage: "parse_queued",
        attempt: ctx.job.attempts,
        correlation_id: ctx.job.correlation_id,
      },
      detail: { parse_job_id: ctx.job.parse_job_id, reason: "parse_deadline" },
    });
  },
};
