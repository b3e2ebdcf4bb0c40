/**
 * `uploaded → parse_queued`: send the stored file to LlamaParse with the webhook configuration
 * and a per-job signing secret; record `parse_job_id`.
 *
 * A crash between LlamaParse accepting the file and our record of its id must not leave a second,
 * silently billed parse job. So the intent is recorded first (secret and start time, fenced), the
 * submission is tagged with our job id, and a retry looks the job up by tag before submitting
 * again; it also reuses the recorded secret, so the first submission's webhook still verifies.
 *
 * The file travels through a temporary file (`rawFile.ts`): never whole in memory, capped at
 * `UPLOAD_MAX_BYTES` and checked against the document's SHA-256 before LlamaParse bills it.
 */
import { randomBytes } from "node:crypto";
import { LeaseLostError } from "../errors.ts";
import type { Stage, StageContext } from "../worker/stage.ts";
import { withRawFile } from "./rawFile.ts";
import type { PipelineServices } from "./services.ts";

interface SubmitIntent {
  started_at: string;
}

export const submitParse: Stage<PipelineServices> = {
  name: "submit_parse",
  handles: ["uploaded"],
  async run(ctx) {
    const { storage, llamaparse, settings } = ctx.services;
    const job = ctx.job;
    const previous = (job.progress as Record<string, unknown>).parse_submit as SubmitIntent | undefined;

    let parseJobId: string | undefined;
    if (previous && job.webhook_secret) {
      // An earlier attempt may have submitted: find it rather than paying twice.
      await ctx.faults.hit("call.llamaparse.find.before", { jobId: job.job_id });
      const found = await llamaparse.findParseJobs(
        { createdAfter: new Date(Date.parse(previous.started_at) - 60_000), tags: { pipeline_job_id: job.job_id } },
        ctx.signal,
      );
      parseJobId = found[0]?.id;
      if (parseJobId) ctx.log.info({ parse_job_id: parseJobId }, "found the parse job an earlier attempt submitted");
    }

    const secret = previous && job.webhook_secret ? job.webhook_secret : randomBytes(32).toString("hex");
    if (!parseJobId) {
      if (!previous || !job.webhook_secret) await recordIntent(ctx, secret);
      await ctx.faults.hit("call.storage.download.before", { jobId: job.job_id });
      const raw = { path: job.raw_path, sha256: job.file_sha256, maxBytes: settings.uploadMaxBytes };
      const submitted = await withRawFile(storage, raw, ctx.signal, async (file) => {
        await ctx.faults.hit("call.llamaparse.submit.before", { jobId: job.job_id });
        return llamaparse.submitParse(
          {
            file,
            filename: job.filename,
            mime: job.mime,
            webhookUrl: settings.webhookUrl,
            webhookSecret: secret,
            tags: { pipeline_job_id: job.job_id },
          },
          ctx.signal,
        );
      });
      await ctx.faults.hit("call.llamaparse.submit.after", { jobId: job.job_id });
      parseJobId = submitted.id;
    }

    await ctx.faults.hit("commit.parse_queued.before", { jobId: job.job_id });
    await ctx.transition("parse_queued", {
      parseJobId,
      // Wait for the webhook; the reconciler looks after the deadline.
      dueInMs: settings.webhookDeadlineMs,
      releaseLease: true,
      detail: { parse_job_id: parseJobId },
    });
  },
};

/** Fenced: record the secret and the attempt's start before anything is sent. */
async function recordIntent(ctx: StageContext<PipelineServices>, secret: string): Promise<void> {
  const intent: SubmitIntent = { started_at: (ctx.now() ?? new Date()).toISOString() };
  await ctx.faults.hit("commit.parse_intent.before", { jobId: ctx.job.job_id });
  const { rowCount } = await ctx.pool.query(
    `UPDATE upload_pipeline.upload_jobs
        SET webhook_secret = $3, progress = progress || jsonb_build_object('parse_submit', $4::jsonb)
      WHERE job_id = $1 AND lease_token = $2`,
    [ctx.job.job_id, ctx.job.lease_token, secret, JSON.stringify(intent)],
  );
  if (rowCount !== 1) throw new LeaseLostError(ctx.job.job_id);
  ctx.job.webhook_secret = secret;
  (ctx.job.progress as Record<string, unknown>).parse_submit = intent;
}
