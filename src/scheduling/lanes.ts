/**
 * Scheduling lanes and tenants (migration 0006). The claim serves jobs by weighted fair share:
 * each (tenant, lane) is a flow whose jobs get increasing finish tags spaced 1 / (tenant weight ×
 * lane weight), and the smallest due tag goes first. Interactive work (weight 1) is ahead of bulk
 * backfills (weight 0.25: a bulk flow gets one claim for every four of an interactive flow, so it
 * is never starved). Anything that queues jobs (uploads, a bulk re-embed, Batch-API backfills)
 * names its lane; the lanes table in the database holds the weights.
 */
import { z } from "zod";

export const LANES = ["interactive", "bulk"] as const;
export type Lane = (typeof LANES)[number];

/** Upload field `priority`: the lane of the job it creates. */
export const Priority = z.enum(LANES, { error: `must be one of ${LANES.join(", ")} (default interactive)` });

/**
 * A tenant id a service-role caller may name (`tenant_id` on upload): the fair-share unit
 * instead of the document's user. Letters, digits, `.`, `_`, `:`, `-`; 1–128 characters.
 */
export const TenantId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, "must be 1–128 characters: letters, digits, '.', '_', ':' or '-', starting with a letter or digit");
