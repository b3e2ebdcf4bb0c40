/**
 * `parsed → parse_validated`: stream the parsed markdown through normalization and hashing
 * (memory stays flat in document size), refuse empty or unusable content, and deduplicate: a
 * document whose normalized text already exists reuses the canonical `parsed_path`.
 */
import { createHash } from "node:crypto";
import { PermanentError } from "../errors.ts";
import { normalizeStream } from "../text/normalize.ts";
import type { Stage } from "../worker/stage.ts";
import type { PipelineServices } from "./services.ts";

/** More than this share of U+FFFD (undecodable bytes) means the parse produced garbage. */
const MAX_REPLACEMENT_SHARE = 0.2;

/** Page markers are ours (parse intake), not content: `<!-- page: 12 -->`. */
const PAGE_MARKER = /^<!--\s*page:?\s*\d{1,9}\s*-->$/i;
const LONGEST_MARKER = 40;

/**
 * Counts lines with visible text that are not page markers, streaming: it keeps at most the
 * first few characters of the current line (a longer line cannot be a marker).
 */
class ContentLines {
  private head = "";
  private long = false;
  private count = 0;

  push(text: string): void {
    let start = 0;
    for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n", start)) {
      this.take(text.slice(start, nl));
      this.endLine();
      start = nl + 1;
    }
    this.take(text.slice(start));
  }

  /** Lines with content, the current one included. */
  end(): number {
    this.endLine();
    return this.count;
  }

  private take(part: string): void {
    if (this.long) return;
    this.head += part;
    if (this.head.length > LONGEST_MARKER) this.long = /\S/.test(this.head);
    if (this.head.length > LONGEST_MARKER && !this.long) this.head = this.head.trim();
  }

  private endLine(): void {
    const line = this.head.trim();
    if (this.long || (line !== "" && !PAGE_MARKER.test(line))) this.count += 1;
    this.head = "";
    this.long = false;
  }
}

export const validateParse: Stage<PipelineServices> = {
  name: "validate",
  handles: ["parsed"],
  async run(ctx) {
    const job = ctx.job;
    if (!job.parsed_path) throw new PermanentError("parsed_path_missing", "the job reached `parsed` without a parsed_path");
    await ctx.faults.hit("call.storage.download.before", { jobId: job.job_id });
    const body = await ctx.services.storage.download(job.parsed_path, ctx.signal);
    const hash = createHash("sha256");
    const content = new ContentLines();
    let chars = 0;
    let replacements = 0;
    for await (const piece of normalizeStream(body)) {
      hash.update(piece);
      content.push(piece);
      chars += piece.length;
      replacements += piece.split("\uFFFD").length - 1;
    }
    if (content.end() === 0) {
      throw new PermanentError("parse_empty", "the parsed document has no text (empty file, or LlamaParse found nothing to extract)");
    }
    if (replacements / chars > MAX_REPLACEMENT_SHARE) {
      throw new PermanentError("parse_unusable", `the parsed document is mostly undecodable bytes (${replacements} of ${chars} characters)`);
    }
    const normalizedSha = hash.digest("hex");

    await ctx.faults.hit("commit.parse_validated.before", { jobId: job.job_id });
    await ctx.fenced(async (tx) => {
      // The oldest other document with the same normalized text is canonical.
      const { rows } = await tx.client.query<{ document_id: string; parsed_path: string }>(
        `SELECT document_id, parsed_path FROM upload_pipeline.documents
          WHERE normalized_sha256 = $1 AND document_id <> $2 AND parsed_path IS NOT NULL
          ORDER BY created_at, document_id LIMIT 1`,
        [normalizedSha, job.document_id],
      );
      const canonical = rows[0];
      await tx.client.query("UPDATE upload_pipeline.documents SET normalized_sha256 = $2, parsed_path = coalesce($3, parsed_path) WHERE document_id = $1", [
        job.document_id,
        normalizedSha,
        canonical?.parsed_path ?? null,
      ]);
      if (canonical) {
        ctx.log.info({ canonical_document_id: canonical.document_id }, "duplicate content: reusing the canonical parsed_path");
        job.parsed_path = canonical.parsed_path;
      }
      await tx.transition("parse_validated", {
        detail: { normalized_sha256: normalizedSha, chars, ...(canonical ? { deduplicated_from: canonical.document_id } : {}) },
      });
    });
    await ctx.faults.hit("commit.parse_validated.after", { jobId: job.job_id });
  },
};
