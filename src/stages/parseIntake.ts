/**
 * Parse intake, `parse_queued → parsed`: the one place that fetches LlamaParse's markdown.
 * Called by the API's webhook handler (actor `webhook`, no lease) and by the worker's reconciler
 * (actor `reconciler`, leased) for jobs whose webhook never came.
 *
 * SIGNATURE CONTRACT (implementation in progress): the API codes against this.
 */
import type pg from "pg";
import type { Logger } from "../logger.ts";
import type { Fence } from "../state-machine/transition.ts";

export type ParseIntakeResult =
  /** Markdown stored, job moved to `parsed`. */
  | { outcome: "parsed" }
  /** LlamaParse reported FAILED/CANCELLED: job moved to `failed_parse`. */
  | { outcome: "failed"; message: string }
  /** LlamaParse is still working: nothing changed. */
  | { outcome: "pending" }
  /** The job is no longer `parse_queued` (or is leased by someone else): nothing changed. */
  | { outcome: "not_applicable"; status: string };

export interface ParseIntakeDeps {
  pool: pg.Pool;
  log: Logger;
  // llamaparse + storage clients are added when the clients land.
  [service: string]: unknown;
}

export async function ingestParseResult(
  _deps: ParseIntakeDeps,
  _args: { jobId: string; actor: "webhook" | "reconciler"; fence: Fence; now?: Date },
): Promise<ParseIntakeResult> {
  throw new Error("ingestParseResult: not implemented yet");
}
