/**
 * `uploaded → parse_queued`: send the stored file to LlamaParse with the webhook configuration
 * and a per-job signing secret; record `parse_job_id`.
 *
 * A crash between LlamaParse accepting the file and our record of its id must not leave a second,
 * silently billed parse job. So the intent is recorded first (secret, start time and a fresh
 * submission id, fenced), the submission is tagged with our job id and that submission id, and a
 * retry looks the job up by both tags before submitting again; it also reuses the recorded
 * secret, so the first submission's webhook still verifies. An operator's retry clears the
 * intent (`POST /jobs/{id}/retry`), so it gets a new submission id and a new secret: the lookup
 * cannot mistake the earlier, failed parse for this one.
 *
 * Deliveries carry our job id in a header (LlamaParse's `webhook_headers`), so one that arrives
 * before `parse_queued` commits is recognised and kept (see `routes/webhook.ts`); the commit
 * then looks for such an early delivery and, if one came, goes on to fetch the result at once.
 *
 * A worker frozen past its lease (a GC pause, SIGSTOP, a VM migration) must not bill a second
 * parse either: it checks its lease right before it submits; a worker that takes the job over
 * from a lease that ran out (rather than was released) waits out the previous holder's call
 * timeout before it looks the job up, so a submission already on its way is found by tag; and a
 * submission that returns to find its lease lost cancels its job if the job now records another.
 *
 * The file travels through a temporary file (`rawFile.ts`): never whole in memory, capped at
 * `UPLOAD_MAX_BYTES` and checked against the document's SHA-256 before LlamaParse bills it.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { coerceError, LeaseLostError } from "../errors.ts";
import type { ClaimedJob } from "../worker/queries.ts";
import type { Stage, StageContext } from "../worker/stage.ts";
import { withRawFile } from "./rawFile.ts";
import type { PipelineServices } from "./services.ts";

/** The header every delivery carries our job id in (LlamaParse's `webhook_headers`). */
export const JOB_ID_HEADER = "x-upload-pipeline-job-id";

/** Recorded in `progress.parse_submit` before anything is sent; `null` after an operator's retry. */
interface SubmitIntent {
  started_at: string;
  /** Tags this submission at LlamaParse (absent in intents recorded before it existed). */
  submission?: string;
}

export const submitParse: Stage<PipelineServices> = {
  name: "submit_parse",
  handles: ["uploaded"],
  async run(ctx) {
    const { storage, llamaparse, settings } = ctx.services;
    const job = ctx.job;
    const recorded = submitIntent(job);
    const intent = recorded && job.webhook_secret ? recorded : { started_at: (ctx.now() ?? new Date()).toISOString(), submission: randomUUID() };
    const tags = { pipeline_job_id: job.job_id, ...(intent.submission ? { pipeline_submission: intent.submission } : {}) };

    let parseJobId: string | undefined;
    let secret: string;
    if (intent === recorded && job.webhook_secret) {
      const waitMs = previousHolderCallLeftMs(ctx);
      if (waitMs > 0) {
        ctx.log.info({ wait_ms: waitMs }, "took over a submission from an expired lease: waiting out the previous holder's call before looking it up");
        return { next: "snooze", delayMs: waitMs, reason: "the previous holder may still be submitting" };
      }
      // An earlier attempt may have submitted: find it rather than paying twice.
      secret = job.webhook_secret;
      await ctx.faults.hit("call.llamaparse.find.before", { jobId: job.job_id });
      const found = await llamaparse.findParseJobs({ createdAfter: new Date(Date.parse(intent.started_at) - 60_000), tags }, ctx.signal);
      parseJobId = found[0]?.id;
      if (parseJobId) ctx.log.info({ parse_job_id: parseJobId }, "found the parse job an earlier attempt submitted");
    } else {
      secret = randomBytes(32).toString("hex");
      await recordIntent(ctx, secret, intent);
    }

    if (!parseJobId) {
      await ctx.faults.hit("call.storage.download.before", { jobId: job.job_id });
      const raw = { path: job.raw_path, sha256: job.file_sha256, maxBytes: settings.uploadMaxBytes };
      const submitted = await withRawFile(storage, raw, ctx.signal, async (file) => {
        await ctx.faults.hit("call.llamaparse.submit.before", { jobId: job.job_id });
        await ctx.checkLease();
        return llamaparse.submitParse(
          {
            file,
            filename: job.filename,
            mime: job.mime,
            webhookUrl: settings.webhookUrl,
            webhookSecret: secret,
            webhookHeaders: { [JOB_ID_HEADER]: job.job_id },
            tags,
          },
          ctx.signal,
        );
      });
      await ctx.faults.hit("call.llamaparse.submit.after", { jobId: job.job_id });
      parseJobId = submitted.id;
    }

    await ctx.faults.hit("commit.parse_queued.before", { jobId: job.job_id });
    // The job row is locked before looking for an early delivery, and the webhook handler locks
    // it too before it decides a delivery is early: either the delivery is seen here, or the
    // handler sees parse_queued.
    const submittedId = parseJobId;
    const early = await ctx
      .fenced(async (tx) => {
        const found = await earlyDelivery(tx.client, job.job_id, submittedId);
        await tx.transition("parse_queued", {
          parseJobId: submittedId,
          // Wait for the webhook; the reconciler looks after the deadline. An early delivery says
          // the result is ready: keep the lease and fetch it now.
          dueInMs: Math.min(settings.webhookDeadlineMs, settings.parseDeadlineMs),
          releaseLease: !found,
          detail: { parse_job_id: submittedId, ...(found ? { early_event_id: found } : {}) },
        });
        return found;
      })
      .catch(async (err: unknown) => {
        if (err instanceof LeaseLostError) await cancelIfSuperseded(ctx, submittedId);
        throw err;
      });
    if (early) ctx.log.info({ parse_job_id: parseJobId, event_id: early }, "the webhook came before parse_queued committed; fetching the result now");
  },
};

/**
 * We took the job over from a holder whose lease ran out (not released, not reaped): it may be
 * frozen between its lease check and its submission. Its call ends at most one LlamaParse call
 * timeout after its lease did, so look for what it submitted only then. The job is snoozed
 * (released, no attempt spent) until that moment; reclaimed, its previous lease was released.
 */
function previousHolderCallLeftMs(ctx: StageContext<PipelineServices>): number {
  const expiredMs = ctx.job.previous_lease_expired_ms;
  if (expiredMs === null || expiredMs === undefined) return 0;
  return Math.ceil(ctx.services.settings.takeoverWaitMs - Number(expiredMs));
}

/**
 * Our lease was lost after LlamaParse accepted the job. If the job now records another parse
 * job, ours is a duplicate: cancel it. If it records ours, or none yet, leave it: the holder
 * adopted it, or will find it by tag.
 */
async function cancelIfSuperseded(ctx: StageContext<PipelineServices>, ours: string): Promise<void> {
  try {
    const { rows } = await ctx.pool.query<{ parse_job_id: string | null }>("SELECT parse_job_id FROM upload_pipeline.upload_jobs WHERE job_id = $1", [
      ctx.job.job_id,
    ]);
    const recorded = rows[0]?.parse_job_id ?? null;
    if (recorded === null || recorded === ours) return;
    await ctx.services.llamaparse.cancelParse(ours);
    ctx.log.warn({ parse_job_id: ours, recorded_parse_job_id: recorded }, "lost the lease after submitting: cancelled the duplicate parse job");
  } catch (err) {
    ctx.log.warn({ parse_job_id: ours, err: coerceError(err).message }, "lost the lease after submitting; could not cancel the duplicate parse job");
  }
}

function submitIntent(job: ClaimedJob): SubmitIntent | undefined {
  const intent = (job.progress as Record<string, unknown>).parse_submit;
  return intent && typeof intent === "object" ? (intent as SubmitIntent) : undefined;
}

/** Fenced: record the secret and the intent before anything is sent. */
async function recordIntent(ctx: StageContext<PipelineServices>, secret: string, intent: SubmitIntent): Promise<void> {
  await ctx.faults.hit("commit.parse_intent.before", { jobId: ctx.job.job_id });
  const { rowCount } = await ctx.pool.query(
    `UPDATE upload_pipeline.upload_jobs
        SET webhook_secret = $3, progress = progress || jsonb_build_object('parse_submit', $4::jsonb)
      WHERE job_id = $1 AND lease_token = $2`,
    [ctx.job.job_id, ctx.job.lease_token, secret, JSON.stringify(intent)],
  );
  if (rowCount !== 1) throw new LeaseLostError(ctx.job.job_id);
}

/** The event id of a verified terminal delivery for this parse job that came while the job was still `uploaded`. */
async function earlyDelivery(client: import("pg").PoolClient, jobId: string, parseJobId: string): Promise<string | undefined> {
  const { rows } = await client.query<{ delivery_key: string }>(
    `SELECT delivery_key FROM upload_pipeline.webhook_log
      WHERE job_id = $1 AND parse_job_id = $2 AND outcome = 'early' ORDER BY id LIMIT 1`,
    [jobId, parseJobId],
  );
  return rows[0]?.delivery_key;
}

/** Milliseconds left before PARSE_DEADLINE_SECONDS ends this job's parse (from its submission's start). */
export function parseDeadlineLeftMs(job: ClaimedJob, deadlineMs: number, now: Date): number {
  const startedAt = submitIntent(job)?.started_at;
  if (!startedAt) return deadlineMs;
  return Date.parse(startedAt) + deadlineMs - now.getTime();
}
