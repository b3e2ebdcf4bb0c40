/**
 * What the LlamaParse mock keeps: uploaded files and parse jobs, and the schedule that moves a
 * job PENDING → RUNNING → COMPLETED | FAILED (or CANCELLED), emitting webhooks on the way.
 * A job's timing and fate are drawn from a PRNG keyed by the seed, the file's SHA-256 and how
 * many jobs that file already had, so they do not depend on the order jobs arrive in.
 */
import { drawLatency } from "../shared/faults.ts";
import type { MockContext } from "../shared/http.ts";
import { rngFor, seededUuid, sha256Hex } from "../shared/rng.ts";
import { containsPoison, parsedPages, POISON_MARKER } from "./markdown.ts";
import type { WebhookConfiguration, WebhookEventType, WebhookSender } from "./webhook.ts";

/** The statuses of a v2 parse job. */
export type JobStatus = "PENDING" | "RUNNING" | "COMPLETED" | "FAILED" | "CANCELLED";

/** Credits per page by tier (what `usage.credits` reports). */
export const CREDITS_PER_PAGE: Record<string, number> = { fast: 1, cost_effective: 3, agentic: 10, agentic_plus: 45 };

/** The file a job parses. */
export interface JobInput {
  bytes: Uint8Array;
  filename: string;
  mime: string;
}

/** One parse job. */
export interface ParseJob {
  id: string;
  projectId: string;
  status: JobStatus;
  createdAt: string;
  updatedAt: string;
  errorMessage: string | null;
  name: string | null;
  tier: string;
  version: string;
  userMetadata: Record<string, string> | null;
  webhooks: WebhookConfiguration[];
  /** The file, or a URL to fetch when the job starts. */
  input: JobInput | { sourceUrl: string };
  /** Seeds this job's draws and webhooks: `{sha256 or url}:{occurrence}`. */
  key: string;
  pages: string[] | null;
  /** Page numbers (1-based) that failed in a partial result (`partialResults` fault). */
  failedPages: ReadonlySet<number>;
  credits: number | null;
  timers: Set<NodeJS.Timeout>;
}

/** A file uploaded with `POST /api/v1/beta/files`. */
export interface UploadedFile extends JobInput {
  id: string;
  purpose: string;
  createdAt: string;
}

const TERMINAL: ReadonlySet<JobStatus> = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

/** Parse jobs and files, and their schedules. */
export class LlamaParseState {
  readonly jobs = new Map<string, ParseJob>();
  readonly files = new Map<string, UploadedFile>();
  #occurrences = new Map<string, number>();
  #counter = 0;

  private readonly ctx: MockContext;
  private readonly webhooks: WebhookSender;
  readonly projectId: string;

  constructor(ctx: MockContext, webhooks: WebhookSender, projectId: string) {
    this.ctx = ctx;
    this.webhooks = webhooks;
    this.projectId = projectId;
  }

  /** Cancels every timer and forgets every job and file. */
  reset(): void {
    for (const job of this.jobs.values()) this.#clearTimers(job);
    this.jobs.clear();
    this.files.clear();
    this.#occurrences.clear();
    this.#counter = 0;
  }

  /** Stops every job's schedule, keeping the jobs (used when the mocks close). */
  stopTimers(): void {
    for (const job of this.jobs.values()) this.#clearTimers(job);
  }

  #iso(): string {
    return new Date(this.ctx.now()).toISOString();
  }

  addFile(input: JobInput, purpose: string): UploadedFile {
    const file: UploadedFile = {
      ...input,
      purpose,
      id: seededUuid(this.ctx.faults.seed, "llamaparse-file", this.ctx.instance, ++this.#counter),
      createdAt: this.#iso(),
    };
    this.files.set(file.id, file);
    return file;
  }

  /** Creates a PENDING job and starts its schedule. */
  create(init: {
    input: ParseJob["input"];
    tier: string;
    version: string;
    name: string | null;
    userMetadata: Record<string, string> | null;
    webhooks: WebhookConfiguration[];
  }): ParseJob {
    const contentKey = "bytes" in init.input ? sha256Hex(init.input.bytes) : `url:${init.input.sourceUrl}`;
    const occurrence = (this.#occurrences.get(contentKey) ?? 0) + 1;
    this.#occurrences.set(contentKey, occurrence);
    const key = `${contentKey}:${occurrence}`;
    const at = this.#iso();
    const job: ParseJob = {
      // Ids are unique per mock instance; the job's draws stay keyed by its content (`key`).
      id: seededUuid(this.ctx.faults.seed, "llamaparse-job", this.ctx.instance, key),
      projectId: this.projectId,
      status: "PENDING",
      createdAt: at,
      updatedAt: at,
      errorMessage: null,
      name: init.name,
      tier: init.tier,
      version: init.version,
      userMetadata: init.userMetadata,
      webhooks: init.webhooks,
      input: init.input,
      key,
      pages: null,
      failedPages: new Set(),
      credits: null,
      timers: new Set(),
    };
    this.jobs.set(job.id, job);
    this.ctx.stats.llamaparse.jobsCreated++;
    this.#schedule(job);
    return job;
  }

  /** Cancels a job that has not finished; returns false when it already has. */
  cancel(job: ParseJob): boolean {
    if (TERMINAL.has(job.status)) return false;
    this.#clearTimers(job);
    this.#finish(job, "CANCELLED", "Job was cancelled");
    return true;
  }

  #clearTimers(job: ParseJob): void {
    for (const t of job.timers) clearTimeout(t);
    job.timers.clear();
  }

  #after(job: ParseJob, ms: number, fn: () => void | Promise<void>): void {
    const timer = setTimeout(() => {
      job.timers.delete(timer);
      void fn();
    }, ms);
    job.timers.add(timer);
  }

  #emit(job: ParseJob, event: WebhookEventType): void {
    this.webhooks.emit(job.id, job.key, event, job.webhooks);
  }

  #schedule(job: ParseJob): void {
    const plan = this.ctx.faults.plan.llamaparse;
    const schedule = plan?.schedule ?? { pending: { dist: "fixed", ms: 20 } as const, running: { dist: "fixed", ms: 50 } as const, msPerPage: 0 };
    const rng = rngFor(this.ctx.faults.seed, "llamaparse-job", job.key);
    const pendingMs = drawLatency(schedule.pending, rng);
    const runningMs = drawLatency(schedule.running, rng);
    const failDraw = rng();
    const failRate = plan?.jobFailureRate ?? 0;
    const partialDraw = rng();
    this.#after(job, 0, () => this.#emit(job, "parse.pending"));
    this.#after(job, pendingMs, async () => {
      this.#set(job, "RUNNING");
      this.#emit(job, "parse.running");
      const input = await this.#load(job);
      if (typeof input === "string") return this.#after(job, runningMs, () => this.#finish(job, "FAILED", input));
      const pages = parsedPages(input.bytes, input.filename, input.mime);
      const total = runningMs + pages.length * schedule.msPerPage;
      this.#after(job, total, () => {
        if (containsPoison(input.bytes)) {
          return this.#finish(job, "FAILED", `Failed to parse the document: content is corrupt (found ${POISON_MARKER}).`);
        }
        if (failDraw < failRate) return this.#finish(job, "FAILED", "Internal error while parsing the document. Please retry.");
        job.pages = pages;
        if (plan?.partialResults && partialDraw < plan.partialResults.rate) job.failedPages = drawPages(pages.length, plan.partialResults.pages, rng);
        const parsed = pages.length - job.failedPages.size;
        job.credits = parsed * (CREDITS_PER_PAGE[job.tier] ?? 1);
        this.ctx.stats.llamaparse.pagesParsed += parsed;
        this.#finish(job, "COMPLETED", null);
      });
    });
  }

  /** The job's bytes; a `source_url` is fetched now (loopback addresses only). */
  async #load(job: ParseJob): Promise<JobInput | string> {
    if ("bytes" in job.input) return job.input;
    const url = job.input.sourceUrl;
    try {
      const u = new URL(url);
      if (!/^(localhost|127(?:\.\d{1,3}){3}|\[::1\])$/i.test(u.hostname)) return `Failed to download file from source_url: host ${u.hostname} is not reachable`;
      const response = await fetch(u, { signal: AbortSignal.any([AbortSignal.timeout(30_000), this.ctx.closing]) });
      if (!response.ok) return `Failed to download file from source_url: HTTP ${response.status}`;
      const bytes = new Uint8Array(await response.arrayBuffer());
      const filename = decodeURIComponent(u.pathname.split("/").pop() ?? "document");
      const input: JobInput = { bytes, filename, mime: response.headers.get("content-type") ?? "application/octet-stream" };
      job.input = input;
      return input;
    } catch (error) {
      return `Failed to download file from source_url: ${(error as Error).message}`;
    }
  }

  #set(job: ParseJob, status: JobStatus): void {
    job.status = status;
    job.updatedAt = this.#iso();
  }

  #finish(job: ParseJob, status: JobStatus, errorMessage: string | null): void {
    if (TERMINAL.has(job.status)) return;
    this.#set(job, status);
    job.errorMessage = errorMessage;
    const finished = this.ctx.stats.llamaparse.jobsFinished;
    finished[status] = (finished[status] ?? 0) + 1;
    const success = job.failedPages.size > 0 ? "parse.partial_success" : "parse.success";
    this.#emit(job, status === "COMPLETED" ? success : status === "FAILED" ? "parse.error" : "parse.cancelled");
  }
}

/** `count` distinct page numbers out of 1..`total` (all of them when `count` ≥ `total`). */
function drawPages(total: number, count: number, rng: () => number): Set<number> {
  const remaining = Array.from({ length: total }, (_, i) => i + 1);
  const failed = new Set<number>();
  while (failed.size < Math.min(count, total)) failed.add(remaining.splice(Math.floor(rng() * remaining.length), 1)[0]!);
  return failed;
}
