/**
 * Runs one scenario: a fresh database on the shared PostgreSQL, the mocks over real HTTP with the
 * scenario's fault plan and seed, the API, N real worker processes; uploads the corpus through
 * the API, applies the crash schedule, waits for quiescence, then checks the invariants.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import pg from "pg";
import { buildWiredApp } from "../src/api/wiring.ts";
import { configForLocalMocks } from "../src/config.ts";
import { migrate } from "../src/db/migrate.ts";
import { withDatabase } from "../src/db/provision.ts";
import { createLogger } from "../src/logger.ts";
import { documentId, jobId, sha256 } from "../src/ids.ts";
import { migrateModelMain } from "../src/ops/migrateModel.ts";
import { profileJobId } from "../src/profiles/jobs.ts";
import { embedVersion } from "../src/services.ts";
import { isTerminal, type JobStatus } from "../src/state-machine/table.ts";
import { expectedEmbedding, type MockStatsSnapshot } from "../mocks/index.ts";
import { startMockServer, type MockServer } from "../mocks/server.ts";
import { mulberry32 } from "../mocks/shared/rng.ts";
import { ApiClient } from "./api.ts";
import { buildCorpus, buildTenantWaves, type CorpusFile, type CorpusKind } from "./corpus.ts";
import { checkInvariants, fingerprint, type ExpectedOutcome, type Fingerprint, type InvariantReport } from "./invariants/index.ts";
import { PhaseDriver } from "./phases.ts";
import { databaseDigest, faultLogDigest, type ReplayRecord } from "./replay.ts";
import { ScenarioFileError, type Scenario } from "./scenario.ts";
import { WorkerFleet, type FleetEvent } from "./workers.ts";
import type { DocumentTrace, TimelineMark } from "./report/types.ts";
import type { SpanCollector } from "./traces.ts";

/** What the runner needs from its surroundings. */
export interface RunEnvironment {
  /** Admin URL of the PostgreSQL server (each run creates its own database on it). */
  serverUrl: string;
  /** Restart the server in place (embedded only); absent with DATABASE_URL. */
  restartPostgres?: (() => Promise<void>) | undefined;
  /** Where worker logs go. */
  logDir: string;
  onProgress?: (p: Progress) => void;
  onEvent?: (line: string) => void;
  /** Collects the API's and the workers' spans; absent: tracing off. */
  spans?: SpanCollector | undefined;
}

export interface Progress {
  scenario: string;
  elapsedMs: number;
  total: number;
  byState: Partial<Record<JobStatus, number>>;
  kills: number;
}

export interface RunOutcome {
  scenario: string;
  databaseUrl: string;
  documentIds: string[];
  expected: Map<string, ExpectedOutcome>;
  durationMs: number;
  /** Completed documents per second, from the first upload to the last completion. */
  throughput: number;
  kills: number;
  /** Worker processes that froze (SIGSTOP) at a scheduled point. */
  freezes: number;
  postgresRestarts: number;
  retried: number;
  timedOut: boolean;
  stuck: string[];
  /** Faults the scenario scheduled that never happened (a pass would prove nothing about them). */
  missed: string[];
  /**
   * The part of `missed` that depends on how fast the machine is: kills and the PostgreSQL restart
   * at a time, and phases (a run can be quiet before the time comes). The rest (targeted kills,
   * crash points, freezes) is exact: a job passes those points on any machine.
   */
  missedOnTheClock: string[];
  /** Bounds the scenario states (fairness, 429 share) that the run broke. */
  boundsBroken: string[];
  mockStats: ReturnType<MockServer["mocks"]["stats"]>;
  /** Worker lives that were SIGKILLed (by us or at a fault point). */
  killedWorkers: string[];
  /** This run's worker logs. */
  logDir: string;
  /** Every fault the mocks injected, as sorted lines (see harness/replay.ts). */
  faultLog: string[];
  /** The fault-log and database digests a replay must reproduce. */
  replay: ReplayRecord;
  events: string[];
  /** Kills, restarts, freezes, PostgreSQL restarts and fault bursts, for the report's time axes. */
  timeline: TimelineMark[];
  /** The traces of a few documents (with `env.spans`). */
  traces: DocumentTrace[];
  /** Dropped on close. */
  pool: pg.Pool;
  dropDatabase(): Promise<void>;
}

/**
 * The runner adds nothing to the worker's own defaults but its log level: a scenario proves the
 * settings that ship. A scenario whose subject is a setting states it in its `workerEnv`.
 */
const SCENARIO_WORKER_ENV: Record<string, string> = { LOG_LEVEL: "info" };

const EXPECT_KEY: Record<CorpusKind, "documents" | "poison" | "empty"> = {
  document: "documents",
  large: "documents",
  reupload: "documents",
  file: "documents",
  poison: "poison",
  empty: "empty",
};

/** Runs one scenario to quiescence and returns its outcome (the caller checks it, then drops the database). */
export async function runScenario(scenario: Scenario, env: RunEnvironment, options: { workers?: number } = {}): Promise<RunOutcome> {
  return new ScenarioRun(scenario, env, options).run();
}

/** What one set-up built, torn down in reverse order whatever happened. */
interface Services {
  mocks: MockServer;
  app: Awaited<ReturnType<typeof buildWiredApp>>;
  api: ApiClient;
  fleet: WorkerFleet;
}

type JobRow = { document_id: string; status: JobStatus; locked_by: string | null; batches: number; profile_id: string | null };

/**
 * One run of a scenario: set-up (database, mocks, API, workers), uploads, fault scheduling,
 * waiting for quiescence, tear-down. `run()` tears everything down in `finally`, so a throwing
 * upload or a failed start leaves no mock, API or worker process behind; the database survives
 * only when the run returns an outcome (the caller checks it, then drops it).
 */
class ScenarioRun {
  private readonly events: string[] = [];
  private readonly timeline: TimelineMark[] = [];
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly dbName: string;
  private readonly databaseUrl: string;
  private pool?: pg.Pool;
  private services?: Partial<Services>;
  private documentIds: string[] = [];
  private readonly killedWorkers: string[] = [];
  private readonly corpus: CorpusFile[];
  /** Targeted crashes (`point#n@jobId`) not yet fired: every new worker process carries them. */
  private readonly targeted: Array<{ spec: string; point: string; jobId: string; label: string; fired: boolean }>;
  private started = 0;
  private postgresRestarts = 0;
  private timedCrashesDone = 0;
  private eventCrashes: Array<{ status: JobStatus; batchesDone?: number | undefined; done: boolean }> = [];
  private faultsSeen: Record<string, number> = {};
  /** Tenant waves: each tenant's document ids and when its first upload started. */
  private readonly tenants = new Map<string, { documentIds: string[]; firstUploadAt: Date }>();
  /** OpenAI tokens billed by the mock, sampled every 2 s from the start of the uploads. */
  private readonly tokenSamples: Array<{ t: number; tokens: number }> = [];
  private faultsPrintedAt = 0;
  /** Operator actions that refused or whose outcome was wrong (they fail the run). */
  private readonly actionFailures: string[] = [];
  /** Switches the scenario's phases on and off from the start of the uploads. */
  private phases?: PhaseDriver;

  private readonly scenario: Scenario;
  private readonly env: RunEnvironment;
  private readonly options: { workers?: number };

  constructor(scenario: Scenario, env: RunEnvironment, options: { workers?: number }) {
    this.scenario = scenario;
    this.env = env;
    this.options = options;
    this.dbName = `scn_${scenario.name.replace(/-/g, "_")}_${randomBytes(3).toString("hex")}`;
    this.databaseUrl = withDatabase(env.serverUrl, this.dbName);
    this.corpus = buildCorpus(scenario);
    this.targeted = crashTargets(scenario, this.corpus).map((t) => ({ ...t, fired: false }));
  }

  async run(): Promise<RunOutcome> {
    let outcome: RunOutcome | undefined;
    try {
      const services = await this.setUp();
      const expected = await this.upload(services);
      this.scheduleFaults(services.fleet);
      const { quiet, retried } = await this.waitAndRetry(services);
      outcome = await this.conclude(services, expected, quiet, retried);
      return outcome;
    } finally {
      await this.tearDown();
      if (!outcome) await this.dropDatabase();
    }
  }

  private note(line: string): void {
    this.events.push(line);
    this.env.onEvent?.(`[${this.scenario.name}] ${line}`);
  }

  /** A fresh migrated database, the mocks with the scenario's plan and seed, the API, the workers (ready). */
  private async setUp(): Promise<Services> {
    const { scenario, env } = this;
    const admin = new pg.Client(env.serverUrl);
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${this.dbName}`);
    } finally {
      await admin.end();
    }
    await migrate(this.databaseUrl, { log: () => {} });
    const pool = new pg.Pool({ connectionString: this.databaseUrl, max: 10 });
    pool.on("error", () => {}); // a Postgres restart drops idle connections; queries reconnect
    this.pool = pool;
    const services: Partial<Services> = {};
    this.services = services;

    // The bucket is ours here: created with the upload limits a deployment gives it.
    const limits = configForLocalMocks("http://unused", scenario.workerEnv);
    const bucketLimits = { fileSizeLimit: limits.UPLOAD_MAX_BYTES, allowedMimeTypes: limits.UPLOAD_ALLOWED_MIME };
    const mocks = (services.mocks = await startMockServer({ seed: scenario.seed, faults: scenario.faults, bucketLimits }));
    // The API reads the scenario's settings too: MAX_ATTEMPTS, for one, is stamped on each job it creates.
    const apiConfig = configForLocalMocks(mocks.baseUrl, {
      ...mocks.env,
      ...scenario.workerEnv,
      SUPABASE_JWT_SECRET: mocks.mocks.keys.jwtSecret,
      DATABASE_URL: this.databaseUrl,
    });
    const app = (services.app = await buildWiredApp({ pool, config: apiConfig, log: createLogger({ level: "silent" }) }));
    const apiUrl = await app.listen({ port: 0, host: "127.0.0.1" });
    services.api = new ApiClient(apiUrl, mocks.mocks.keys.jwtSecret);

    const workerEnv: Record<string, string> = {
      ...SCENARIO_WORKER_ENV,
      ...mocks.env,
      DATABASE_URL: this.databaseUrl,
      WEBHOOK_BASE_URL: apiUrl,
      WORKER_CONCURRENCY: String(scenario.workers.slots),
      ...env.spans?.workerEnv(),
      ...scenario.workerEnv,
    };
    // The fleet knows a worker is ready by its "worker started" line: keep info-level logs.
    if (!["info", "debug", "trace"].includes(workerEnv.LOG_LEVEL ?? "")) workerEnv.LOG_LEVEL = "info";
    const fleet = (services.fleet = new WorkerFleet({
      count: this.options.workers ?? scenario.workers.processes,
      env: workerEnv,
      logDir: join(env.logDir, scenario.name),
      crashPoints: scenario.crashPoints,
      freezes: scenario.freezes,
      targetedCrashes: () => this.targeted.filter((t) => !t.fired).map((t) => t.spec),
      onEvent: (e: FleetEvent) => this.onFleetEvent(e),
    }));
    await fleet.start();
    return services as Services;
  }

  /** A timeline mark at now (`until` closes the latest open band of that kind instead). */
  private mark(kind: TimelineMark["kind"], label: string, options: { worker?: string; until?: boolean } = {}): void {
    const open = options.until ? this.timeline.findLast((k) => k.kind === kind && k.untilMs === undefined && k.label === label) : undefined;
    if (open) open.untilMs = Date.now();
    else if (!options.until) this.timeline.push({ kind, atMs: Date.now(), label, ...(options.worker ? { worker: options.worker } : {}) });
  }

  private onFleetEvent(e: FleetEvent): void {
    if (e.kind === "killed") this.note(`killed ${e.workerId} (${e.reason})`);
    if (e.kind === "killed") this.mark("kill", `kill ${e.workerId}`, { worker: e.workerId });
    if (e.kind === "frozen") this.note(`${e.workerId} froze itself (SIGSTOP) at ${e.point}`);
    if (e.kind === "frozen") this.mark("freeze", `frozen ${e.workerId}`, { worker: e.workerId });
    if (e.kind === "thawed") this.note(`thawed ${e.workerId} (SIGCONT)`);
    if (e.kind === "thawed") this.mark("freeze", `frozen ${e.workerId}`, { until: true });
    if (e.kind === "started" && e.life > 1) this.note(`restarted worker ${e.worker} as ${e.workerId}`);
    if (e.kind === "started" && e.life > 1) this.mark("restart", `restart ${e.workerId}`, { worker: e.workerId });
    if (e.kind === "crashed") this.mark("kill", `kill ${e.workerId} at ${e.point}`, { worker: e.workerId });
    if (e.kind === "crashed" && e.jobId) {
      const target = this.targeted.find((t) => !t.fired && t.jobId === e.jobId && t.point === e.point);
      if (target) target.fired = true;
      this.note(`${e.workerId} killed at ${e.point} holding ${target?.label ?? `job ${e.jobId}`}`);
    }
    if (e.kind === "crashed" && !e.jobId) this.note(`${e.workerId} died at its fault point ${e.point}`);
    if (e.kind === "exited" && e.signal === "SIGKILL") this.killedWorkers.push(e.workerId);
    if (e.kind === "exited" && e.signal === null && e.code !== 0) this.note(`${e.workerId} exited with code ${e.code} (see its log)`);
  }

  /** Uploads the corpus through the API; returns the outcome each document must end in. */
  private async upload({ api, mocks }: Services): Promise<Map<string, ExpectedOutcome>> {
    this.started = Date.now();
    // The scenario clock: outage windows count from the first upload, not from when the mocks
    // started (worker start-up takes seconds more on a busy machine).
    mocks.mocks.state.faults.startClock();
    this.phases = new PhaseDriver(this.scenario.phases, { pool: this.pool!, adminUrl: mocks.urls.admin, note: (line) => this.note(line) });
    const corpus = this.corpus;
    this.sampleTokens(mocks);
    const uploaded = await uploadAll(api, corpus);
    for (const wave of buildTenantWaves(this.scenario)) {
      const firstUploadAt = new Date();
      const files = await uploadAll(api, wave);
      this.tenants.set(wave[0]!.tenant!, { documentIds: files.map((f) => f.documentId), firstUploadAt });
      uploaded.push(...files);
      this.note(`tenant ${wave[0]!.tenant} uploaded ${wave.length} documents${wave[0]!.priority === "bulk" ? " (bulk)" : ""}`);
    }
    const expected = new Map<string, ExpectedOutcome>();
    for (const { file, documentId } of uploaded) expected.set(documentId, this.scenario.expect[EXPECT_KEY[file.kind]] as ExpectedOutcome);
    this.documentIds = [...expected.keys()];
    this.note(`uploaded ${uploaded.length} files (${this.documentIds.length} distinct documents)`);
    return expected;
  }

  /** Tokens/min over time for the report, from the OpenAI mock's billed usage. */
  private sampleTokens(mocks: MockServer): void {
    const t0 = Date.now();
    const billed = () => Object.values(mocks.mocks.stats().openai.usage).reduce((a, u) => a + (u?.prompt_tokens ?? 0), 0);
    this.tokenSamples.push({ t: 0, tokens: 0 });
    this.timers.push(setInterval(() => this.tokenSamples.push({ t: Date.now() - t0, tokens: billed() }), 2_000));
  }

  /** The scenario's stated bounds, checked over the finished run; each broken one is named. */
  private async checkBounds(pool: pg.Pool, mockStats: RunOutcome["mockStats"]): Promise<string[]> {
    const broken: string[] = [];
    const { scenario } = this;
    if (this.tokenSamples.length > 1) {
      // Per 2 s step: tokens/min in that step, and the tokens billed so far against what a key
      // with this TPM allows from a full bucket (TPM + TPM/min × elapsed). Steps above the limit
      // are the full bucket the key starts with being spent.
      const tpm = scenario.faults.openai?.rateLimits?.tpm;
      const steps = this.tokenSamples.slice(1).map((s, i) => {
        const prev = this.tokenSamples[i]!;
        const rate = Math.round(((s.tokens - prev.tokens) / (s.t - prev.t)) * 60_000).toLocaleString("en-US");
        const envelope = tpm ? ` (${s.tokens.toLocaleString("en-US")} of ${Math.round(tpm + (tpm * s.t) / 60_000).toLocaleString("en-US")} allowed)` : "";
        return `${Math.round(s.t / 1000)}s ${rate}/min${envelope}`;
      });
      this.note(`tokens over time${tpm ? ` (key limit ${tpm.toLocaleString("en-US")} TPM)` : ""}: ${steps.join(", ")}`);
    }
    if (scenario.maxRateLimitedPct !== undefined) {
      const answers = mockStats.requests["openai.embeddings"] ?? {};
      const all = Object.values(answers).reduce((a, b) => a + b, 0);
      const pct = all ? (100 * (answers["429"] ?? 0)) / all : 0;
      this.note(`OpenAI answers: ${all}, of them 429: ${answers["429"] ?? 0} (${pct.toFixed(2)} %)`);
      if (pct >= scenario.maxRateLimitedPct) broken.push(`429s were ${pct.toFixed(2)} % of OpenAI answers, bound ${scenario.maxRateLimitedPct} %`);
    }
    for (const bound of scenario.fairness) {
      const mine = this.tenants.get(bound.tenant);
      const other = this.tenants.get(bound.completesWithin.other);
      if (!mine || !other) {
        broken.push(`fairness bound names a tenant that uploaded nothing: ${bound.tenant}, ${bound.completesWithin.other}`);
        continue;
      }
      const { rows } = await pool.query<{ document_id: string; at: Date }>(
        `SELECT j.document_id, e.at FROM upload_pipeline.job_events e JOIN upload_pipeline.upload_jobs j USING (job_id)
          WHERE e.to_status = 'complete' AND j.document_id = ANY($1) ORDER BY e.id`,
        [[...mine.documentIds, ...other.documentIds]],
      );
      const otherIds = new Set(other.documentIds);
      const myLast = rows.filter((r) => !otherIds.has(r.document_id)).at(-1);
      const otherAfter = rows.filter((r) => otherIds.has(r.document_id) && r.at >= mine.firstUploadAt);
      const done = rows.filter((r) => !otherIds.has(r.document_id)).length;
      const overtaken = myLast ? otherAfter.filter((r) => r.at <= myLast.at).length : Infinity;
      this.note(
        `tenant ${bound.tenant}: all ${done} documents completed while ${bound.completesWithin.other} completed ${overtaken} (bound: fewer than ${bound.completesWithin.count})`,
      );
      if (done < mine.documentIds.length || overtaken >= bound.completesWithin.count) {
        broken.push(`tenant ${bound.tenant} waited for ${overtaken} of ${bound.completesWithin.other}'s documents (bound ${bound.completesWithin.count})`);
      }
      // A bound met only because the other tenant had nothing left would prove nothing.
      if (otherAfter.length < bound.completesWithin.count)
        broken.push(
          `tenant ${bound.completesWithin.other} completed only ${otherAfter.length} documents after ${bound.tenant} uploaded: the bound was not tested`,
        );
    }
    return broken;
  }

  /** The crash schedule (timed and event-triggered kills) and the Postgres restart, from the end of the uploads. */
  private scheduleFaults(fleet: WorkerFleet): void {
    const { scenario, env } = this;
    const rng = mulberry32(scenario.seed ^ 0x5eed);
    for (const crash of scenario.crashes) {
      if (!("atMs" in crash)) continue;
      this.timers.push(
        setTimeout(() => {
          if (fleet.kill(crash.worker ?? Math.floor(rng() * fleet.size), `scheduled at ${crash.atMs} ms`)) this.timedCrashesDone += 1;
        }, crash.atMs),
      );
    }
    this.eventCrashes = scenario.crashes.flatMap((c) => ("when" in c ? [{ ...c.when, done: false }] : []));
    const restart = env.restartPostgres;
    if (scenario.postgresRestartAtMs !== undefined && restart) {
      this.timers.push(
        setTimeout(() => {
          this.note("restarting PostgreSQL");
          this.mark("postgres", "PostgreSQL restart");
          restart().then(
            () => {
              this.postgresRestarts += 1;
              this.mark("postgres", "PostgreSQL restart", { until: true });
              this.note("PostgreSQL is back");
            },
            (err: Error) => this.note(`PostgreSQL restart failed: ${err.message}`),
          );
        }, scenario.postgresRestartAtMs),
      );
    }
  }

  /** Waits for quiescence; with `retryFailed`, retries every dead-lettered job through the API and waits again. */
  private async waitAndRetry(services: Services): Promise<{ quiet: { ok: boolean; rows: JobRow[] }; retried: number }> {
    const deadline = this.started + this.scenario.deadlineMs;
    let quiet = await this.waitForQuiet(services, deadline);
    let retried = 0;
    if (quiet.ok && this.scenario.retryFailed) {
      for (const row of quiet.rows.filter((r) => r.status.startsWith("failed_"))) {
        const status = await services.api.retry(row.document_id);
        if (status === 200) retried += 1;
        else this.note(`retry of ${row.document_id} answered ${status}`);
      }
      this.note(`retried ${retried} dead-lettered jobs through the API`);
      if (retried > 0) quiet = await this.waitForQuiet(services, deadline);
    }
    for (const action of this.scenario.actions) {
      if (!quiet.ok) break;
      await this.runAction(services, action.migrateModel);
      quiet = await this.waitForQuiet(services, deadline);
    }
    return { quiet, retried };
  }

  /**
   * `npm run migrate-model -- <argv>` against the run's database (the CLI's own main, its lines
   * in the run's events). After a cutover, GET /jobs must report the new profile for every document.
   */
  private async runAction(services: Services, argv: string[]): Promise<void> {
    const lines: string[] = [];
    const code = await migrateModelMain(argv, { DATABASE_URL: this.databaseUrl }, (line) => lines.push(line)).catch((err: Error) => {
      lines.push(err.message);
      return 2;
    });
    this.note(`migrate-model ${argv.join(" ")}: ${lines.join(" | ")}`);
    if (code !== 0) this.actionFailures.push(`migrate-model ${argv.join(" ")} exited ${code}: ${lines.join(" | ")}`);
    if (argv[0] !== "cutover" || code !== 0) return;
    const { rows } = await this.pool!.query<{ profile_id: string }>("SELECT profile_id FROM upload_pipeline.embedding_profiles WHERE role = 'active'");
    const active = rows[0]?.profile_id;
    for (const documentId of this.documentIds) {
      const status = await services.api.status(documentId);
      if (status.profile !== active) this.actionFailures.push(`after cutover GET /jobs/${documentId} reports profile ${status.profile}, not ${active}`);
    }
  }

  private async waitForQuiet({ fleet, mocks }: Services, deadline: number): Promise<{ ok: boolean; rows: JobRow[] }> {
    const pool = this.pool!;
    let rows: JobRow[] = [];
    while (Date.now() < deadline) {
      try {
        ({ rows } = await pool.query<JobRow>(
          `SELECT document_id, status, locked_by, coalesce((progress->>'batches_done')::int, 0) AS batches, profile_id
             FROM upload_pipeline.upload_jobs WHERE document_id = ANY($1)`,
          [this.documentIds],
        ));
      } catch {
        await sleep(200); // the database is restarting
        continue;
      }
      for (const crash of this.eventCrashes) {
        if (crash.done) continue;
        const hit = rows.find((r) => r.status === crash.status && r.locked_by && r.batches >= (crash.batchesDone ?? 0));
        const index = hit?.locked_by ? fleet.indexOf(hit.locked_by) : undefined;
        if (hit && index !== undefined) {
          crash.done = fleet.kill(index, `job entered ${crash.status}${crash.batchesDone ? ` with ${hit.batches} batches stored` : ""}`);
        }
      }
      this.reportNewFaults(mocks);
      const byState: Partial<Record<JobStatus, number>> = {};
      for (const r of rows) byState[r.status] = (byState[r.status] ?? 0) + 1;
      this.env.onProgress?.({
        scenario: this.scenario.name,
        elapsedMs: Date.now() - this.started,
        total: rows.length,
        byState,
        kills: fleet.kills,
      });
      // Every upload's job, and every model migration's job of the run's documents, terminal.
      const uploads = rows.filter((r) => r.profile_id === null).length;
      if (uploads === this.documentIds.length && rows.every((r) => isTerminal(r.status))) return { ok: true, rows };
      // Poll fast while an event-triggered crash is still waiting for its moment.
      await sleep(this.eventCrashes.some((c) => !c.done) ? 40 : 150);
    }
    this.note(`deadline of ${this.scenario.deadlineMs} ms passed before the run was quiet`);
    return { ok: false, rows };
  }

  /** Print the mocks' injected faults as they happen (a line when the counts move, at most every 2 s). */
  private reportNewFaults(mocks: MockServer): void {
    if (Date.now() - this.faultsPrintedAt < 2_000) return;
    const since = Math.max(this.faultsPrintedAt, this.started);
    this.faultsPrintedAt = Date.now();
    const stats = mocks.mocks.stats();
    const now: Record<string, number> = {};
    for (const [route, byKind] of Object.entries(stats.faults)) {
      for (const [kind, n] of Object.entries(byKind)) now[`${route.split(".")[0]} ${kind}`] = (now[`${route.split(".")[0]} ${kind}`] ?? 0) + n;
    }
    for (const [kind, outcomes] of Object.entries(stats.webhooks.deliveries)) {
      if (kind !== "genuine") now[`webhook ${kind}`] = Object.values(outcomes).reduce((a, b) => a + (b ?? 0), 0);
    }
    const moved = Object.entries(now).filter(([k, n]) => n > (this.faultsSeen[k] ?? 0));
    if (moved.length > 0) {
      const burst = moved.map(([k, n]) => `${k} +${n - (this.faultsSeen[k] ?? 0)}`).join(", ");
      this.note(`faults: ${burst}`);
      // A band over the sampling interval the faults fell in (sampled every 2 s).
      this.timeline.push({ kind: "faults", atMs: since, untilMs: this.faultsPrintedAt, label: burst });
    }
    this.faultsSeen = now;
  }

  /** Stops the schedule and the services, then gathers the outcome; a fault the scenario asked for that never happened is named. */
  private async conclude(
    services: Services,
    expected: Map<string, ExpectedOutcome>,
    quiet: { ok: boolean; rows: JobRow[] },
    retried: number,
  ): Promise<RunOutcome> {
    const { scenario, env } = this;
    const { fleet, mocks } = services;
    const pool = this.pool!;
    const finished = Date.now();
    // A fault the scenario asked for that never happened would make a pass vacuous: say so.
    const missedOnTheClock: string[] = [];
    const timed = scenario.crashes.filter((c) => "atMs" in c).length;
    if (this.timedCrashesDone < timed) missedOnTheClock.push(`${timed - this.timedCrashesDone} scheduled kill(s) never happened: the run was quiet first`);
    if (scenario.postgresRestartAtMs !== undefined && env.restartPostgres && this.postgresRestarts === 0)
      missedOnTheClock.push("the PostgreSQL restart never happened: the run was quiet first");
    this.phases?.stop();
    if (this.phases) missedOnTheClock.push(...(await this.phases.missed()));
    const missed: string[] = [...missedOnTheClock];
    for (const c of this.eventCrashes) if (!c.done) missed.push(`the kill when a job entered ${c.status} never happened`);
    const unreached = scenario.crashPoints.filter(
      (p, i) => fleet.crashPointsReached.filter((q) => q === p).length < scenario.crashPoints.slice(0, i + 1).filter((q) => q === p).length,
    );
    if (unreached.length > 0) missed.push(`crash points never reached: ${unreached.join(", ")}`);
    const unfrozen = scenario.freezes.filter((f) => !fleet.freezesReached.includes(f.point));
    if (unfrozen.length > 0) missed.push(`freezes never happened: ${unfrozen.map((f) => f.point).join(", ")}`);
    for (const t of this.targeted) if (!t.fired) missed.push(`the kill of the worker holding ${t.label} at ${t.point} never happened`);
    missed.push(...this.actionFailures);
    await this.tearDown();
    const mockStats = mocks.mocks.stats();
    const faults = faultLogDigest(mocks.mocks.faultLog());
    const boundsBroken = await this.checkBounds(pool, mockStats);
    if (scenario.freezes.length > 0) missed.push(...(await frozenWorkersBilledTwice(pool, this.documentIds, mockStats, fleet.freezesReached.length)));
    const completeAt = await lastCompletion(pool, this.started);
    return {
      scenario: scenario.name,
      databaseUrl: this.databaseUrl,
      documentIds: this.documentIds,
      expected,
      durationMs: finished - this.started,
      throughput: quiet.rows.filter((r) => r.status === "complete").length / (Math.max(1, completeAt - this.started) / 1000),
      kills: fleet.kills,
      freezes: fleet.freezesReached.length,
      postgresRestarts: this.postgresRestarts,
      retried,
      timedOut: !quiet.ok,
      missed,
      missedOnTheClock,
      boundsBroken,
      stuck: quiet.ok ? [] : await describeStuck(pool, quiet.rows),
      mockStats,
      faultLog: faults.lines,
      killedWorkers: this.killedWorkers,
      logDir: join(env.logDir, scenario.name),
      replay: { faultLogDigest: faults.digest, faults: faults.lines.length, databaseDigest: await databaseDigest(pool, this.documentIds) },
      events: this.events,
      timeline: this.timeline,
      traces: (await env.spans?.take(pool, this.documentIds, this.timeline)) ?? [],
      pool,
      dropDatabase: () => this.dropDatabase(),
    };
  }

  /**
   * Stops the timers, the workers, the API and the mocks (pending webhooks first, so none lands
   * on a closed API). Idempotent; each step runs even when an earlier one failed.
   */
  private async tearDown(): Promise<void> {
    this.timers.forEach(clearTimeout);
    this.timers.length = 0;
    this.phases?.stop();
    const services = this.services;
    if (!services) return;
    this.services = undefined;
    const { fleet, mocks, app } = services;
    const steps: Array<() => Promise<unknown> | undefined> = [() => fleet?.stop(), () => mocks?.mocks.webhooksIdle(), () => app?.close(), () => mocks?.close()];
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        this.note(`tear-down: ${(err as Error).message}`);
      }
    }
  }

  private async dropDatabase(): Promise<void> {
    await this.pool?.end().catch(() => {});
    this.pool = undefined;
    const c = new pg.Client(this.env.serverUrl);
    await c.connect();
    try {
      await c.query(`DROP DATABASE IF EXISTS ${this.dbName} WITH (FORCE)`);
    } finally {
      await c.end();
    }
  }
}

/**
 * The targeted crashes of a scenario as worker crash specs (`point#n@jobId`): the job id of a
 * document is known before it is uploaded (uuidv5 of its user and content hash).
 * @throws {ScenarioFileError} when a crash names a document the corpus does not have
 */
export function crashTargets(scenario: Scenario, corpus: CorpusFile[]): Array<{ spec: string; point: string; jobId: string; label: string }> {
  return scenario.crashes.flatMap((crash, i) => {
    if (!("document" in crash)) return [];
    const file = typeof crash.document === "number" ? corpus[crash.document] : corpus.find((f) => f.filename === crash.document);
    if (!file) {
      throw new ScenarioFileError(`scenario ${scenario.name}`, [
        `crashes.${i}.document: ${JSON.stringify(crash.document)} is not in the corpus; give an index 0..${corpus.length - 1} or one of ${corpus
          .slice(0, 8)
          .map((f) => f.filename)
          .join(", ")}${corpus.length > 8 ? ", …" : ""}`,
      ]);
    }
    const document = documentId(file.userId, sha256(file.bytes));
    const job = crash.profile ? profileJobId(document, crash.profile) : jobId(document);
    const point = crash.at.split("#")[0]!;
    return [{ spec: `${crash.at}@${job}`, point, jobId: job, label: `${file.filename}'s ${crash.profile ? `${crash.profile} migration ` : ""}job` }];
  });
}

async function uploadAll(api: ApiClient, corpus: CorpusFile[]): Promise<Array<{ file: CorpusFile; documentId: string }>> {
  const out: Array<{ file: CorpusFile; documentId: string }> = [];
  const queue = [...corpus];
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      for (let file = queue.shift(); file; file = queue.shift()) {
        const { documentId } = await api.upload(file);
        out.push({ file, documentId });
      }
    }),
  );
  return out;
}

async function lastCompletion(pool: pg.Pool, since: number): Promise<number> {
  const { rows } = await pool.query<{ at: Date | null }>("SELECT max(at) AS at FROM upload_pipeline.job_events WHERE to_status = 'complete'");
  return rows[0]?.at?.getTime() ?? since;
}

async function describeStuck(pool: pg.Pool, rows: Array<{ document_id: string; status: JobStatus }>): Promise<string[]> {
  const stuck = rows.filter((r) => !isTerminal(r.status));
  const out: string[] = [];
  for (const row of stuck.slice(0, 20)) {
    const { rows: evs } = await pool.query<{ from_status: string | null; to_status: string; worker_id: string | null; at: Date }>(
      `SELECT e.from_status, e.to_status, e.worker_id, e.at FROM upload_pipeline.job_events e
         JOIN upload_pipeline.upload_jobs j USING (job_id) WHERE j.document_id = $1 ORDER BY e.id DESC LIMIT 3`,
      [row.document_id],
    );
    const { rows: job } = await pool.query("SELECT attempts, locked_by, next_attempt_at, last_error FROM upload_pipeline.upload_jobs WHERE document_id = $1", [
      row.document_id,
    ]);
    out.push(
      `${row.document_id} stuck in ${row.status} (attempts ${job[0]?.attempts}, locked_by ${job[0]?.locked_by ?? "-"}, last_error ${JSON.stringify(job[0]?.last_error?.code ?? null)}); last events: ` +
        evs.map((e) => `${e.from_status ?? "∅"}→${e.to_status} by ${e.worker_id ?? "-"}`).join(", "),
    );
  }
  return out;
}

/**
 * A frozen worker bills nothing twice: exactly one LlamaParse job per document, and at most one
 * re-sent embeddings batch per freeze (the one a worker had in hand when it froze), counted as
 * the mock's answered embeddings requests beyond the batches the jobs committed.
 */
async function frozenWorkersBilledTwice(pool: pg.Pool, documentIds: string[], stats: MockStatsSnapshot, freezes: number): Promise<string[]> {
  const problems: string[] = [];
  const answered = (route: string) => stats.requests[route]?.["200"] ?? 0;
  const parseJobs = answered("llamaparse.upload");
  if (parseJobs !== documentIds.length)
    problems.push(`${parseJobs} LlamaParse jobs were created for ${documentIds.length} documents (a frozen worker billed a parse twice)`);
  const { rows } = await pool.query<{ batches: string }>(
    "SELECT coalesce(sum((progress->>'batches_done')::int), 0) AS batches FROM upload_pipeline.upload_jobs WHERE document_id = ANY($1)",
    [documentIds],
  );
  const resent = answered("openai.embeddings") - Number(rows[0]?.batches ?? 0);
  if (resent > freezes) problems.push(`${resent} embeddings batches were sent again, more than one per freeze (${freezes})`);
  return problems;
}

/** Check a finished run's invariants (SPEC §8), against a reference run's fingerprints when given. */
export async function checkRun(run: RunOutcome, scenario: Scenario, reference?: Map<string, Fingerprint>): Promise<InvariantReport> {
  const config = configForLocalMocks("http://unused", scenario.workerEnv);
  const dims = Number(embedVersion(config).slice(1));
  const base = {
    documentIds: run.documentIds,
    expected: run.expected,
    expectedEmbedding: (model: string, input: string, dimensions: number) => expectedEmbedding(model, input, dimensions),
    mockUsage: {
      promptTokensByModel: Object.fromEntries(Object.entries(run.mockStats.openai.usage).map(([m, u]) => [m, u.prompt_tokens])),
      batchPromptTokensByModel: Object.fromEntries(Object.entries(run.mockStats.openai.batchUsage).map(([m, u]) => [m, u.prompt_tokens])),
    },
    crashesHappened: run.kills > 0 || run.postgresRestarts > 0 || run.freezes > 0,
    batchApi: { lane: config.EMBED_BULK_VIA_BATCH_API === "true", batchesCreated: run.mockStats.openai.batches.created },
  };
  const uploads = { model: config.EMBED_MODEL, version: embedVersion(config), dimensions: dims };
  // Model migrations (actions): the profiles their jobs filled, each checked in a pass of its own.
  const { rows: migrated } = await run.pool.query<{ profile_id: string; model: string; version: string; dimensions: number }>(
    `SELECT p.profile_id, p.embed_model AS model, p.embed_version AS version, p.embed_dimensions AS dimensions
       FROM upload_pipeline.embedding_profiles p
      WHERE EXISTS (SELECT 1 FROM upload_pipeline.upload_jobs j WHERE j.profile_id = p.profile_id) ORDER BY p.profile_id`,
  );
  if (migrated.length === 0) return checkInvariants(run.pool, { ...base, reference, embed: uploads });
  const passes = [
    { label: "uploads", jobs: null as string | null, embed: uploads },
    ...migrated.map((p) => ({ label: p.profile_id, jobs: p.profile_id, embed: p })),
  ];
  const reports = [];
  for (const pass of passes) {
    const otherEmbeds = passes.filter((o) => o !== pass).map((o) => ({ model: o.embed.model, version: o.embed.version }));
    const embed = { model: pass.embed.model, version: pass.embed.version, dimensions: pass.embed.dimensions };
    // A migration's vectors are compared with the mock's embedding of each chunk (a recomputation),
    // its chunks with the uploads' reference: the reference run fingerprints the uploads' profile.
    const report = await checkInvariants(run.pool, { ...base, ...(pass.jobs === null ? { reference } : {}), embed, profile: { jobs: pass.jobs, otherEmbeds } });
    reports.push({ label: pass.label, report });
  }
  return mergeReports(reports);
}

/** One report from a pass per profile: a check holds when it holds in every pass; violations name their profile. */
function mergeReports(reports: Array<{ label: string; report: InvariantReport }>): InvariantReport {
  const checks = reports[0]!.report.checks.map((first, i) => {
    const all = reports.map(({ label, report }) => ({ label, check: report.checks[i]! }));
    const notes = all.filter((a) => a.check.note).map((a) => `${a.label}: ${a.check.note}`);
    return {
      ...first,
      ok: all.every((a) => a.check.ok),
      violations: all.flatMap((a) => a.check.violations.map((v) => `[${a.label}] ${v}`)),
      violationCount: all.reduce((n, a) => n + a.check.violationCount, 0),
      ...(notes.length > 0 ? { note: notes.join("; ") } : {}),
    };
  });
  return { ok: checks.every((c) => c.ok), checks };
}

export { fingerprint };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
