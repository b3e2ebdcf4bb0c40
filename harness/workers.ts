/**
 * Real worker processes for a scenario: `npm run worker`'s entry point as child processes, so a
 * crash is a real SIGKILL with no cleanup. A process that dies is restarted (a new "life" with
 * a new WORKER_ID, so events and leases name the life that wrote them).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CRASH_LINE, FREEZE_LINE } from "../src/worker/faultPoints.ts";
import { WORKER_NODE_FLAGS, workerNodeEnv } from "../src/worker/nodeFlags.ts";

const WORKER_ENTRY = new URL("../src/worker/main.ts", import.meta.url).pathname;

export interface FleetOptions {
  count: number;
  env: Record<string, string>;
  logDir: string;
  /** Fault points at which a worker kills itself: each new process (any worker) takes the next one. */
  crashPoints?: readonly string[];
  /** Fault points at which worker `worker`'s first life freezes itself (SIGSTOP) until thawed `forMs` later. */
  freezes?: ReadonlyArray<{ worker: number; point: string; forMs: number }>;
  /** Crashes every new process carries (`point#n@jobId`: whoever holds that job there dies), read at each spawn. */
  targetedCrashes?: () => readonly string[];
  onEvent?: (event: FleetEvent) => void;
}

export type FleetEvent =
  | { kind: "started"; worker: number; workerId: string; life: number }
  | { kind: "killed"; worker: number; workerId: string; reason: string }
  | { kind: "frozen" | "thawed"; worker: number; workerId: string; point: string }
  /** A worker is about to kill itself at a fault point (its last line), holding `jobId` for a targeted crash. */
  | { kind: "crashed"; worker: number; workerId: string; point: string; jobId: string | null }
  /** `byUs`: the fleet's own SIGKILL (else a SIGKILL is the process's own, at `crashAt`). */
  | { kind: "exited"; worker: number; workerId: string; code: number | null; signal: string | null; byUs: boolean; crashAt?: string | undefined };

interface Slot {
  index: number;
  life: number;
  /** The fault point this life kills itself at, if any. */
  crashAt?: string | undefined;
  killedByUs?: boolean;
  /** The crash lines this life wrote before killing itself (a job: a targeted crash; none: its own `crashAt`). */
  crashes: Array<{ point: string; jobId: string | null }>;
  child?: ChildProcess | undefined;
  workerId: string;
  exited?: Promise<void>;
}

export class WorkerFleet {
  private readonly slots: Slot[] = [];
  private stopping = false;
  /** Crash points not yet handed to a process (a life killed before its point gives it back). */
  private readonly pendingCrashPoints: string[];
  /** Every SIGKILL the fleet saw (ours or self-inflicted at a fault point). */
  kills = 0;
  /** Fault points at which a process really killed itself. */
  readonly crashPointsReached: string[] = [];
  /** Freeze points at which a process really stopped itself. */
  readonly freezesReached: string[] = [];
  private readonly thawTimers = new Set<NodeJS.Timeout>();
  /** Exits that were neither our SIGKILL nor our SIGTERM. */
  unexpectedExits = 0;

  private readonly opts: FleetOptions;
  /** Where workers mark the targeted crashes they fired, so each fires once per run. */
  private readonly onceDir: string;

  constructor(opts: FleetOptions) {
    this.opts = opts;
    mkdirSync(opts.logDir, { recursive: true });
    this.onceDir = mkdtempSync(join(tmpdir(), "crash-once-"));
    this.pendingCrashPoints = [...(opts.crashPoints ?? [])];
  }

  /**
   * Start every worker and resolve once each has said "worker started" (so timings measure the
   * pipeline, not N processes booting on a small machine), or after `timeoutMs` regardless.
   */
  async start(timeoutMs = 30_000): Promise<void> {
    const ready: Array<Promise<void>> = [];
    for (let i = 0; i < this.opts.count; i++) {
      const slot: Slot = { index: i, life: 0, workerId: "", crashes: [] };
      this.slots.push(slot);
      ready.push(this.spawn(slot));
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(ready), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }

  /** The process index that holds `workerId` (as written in `locked_by`), if it is alive. */
  indexOf(workerId: string): number | undefined {
    return this.slots.find((s) => s.workerId === workerId && s.child)?.index;
  }

  get size(): number {
    return this.slots.length;
  }

  /** SIGKILL worker `index` (false when it is not running); it is restarted as a new life. */
  kill(index: number, reason: string): boolean {
    const slot = this.slots[index];
    // A process that wrote its crash line is already killing itself: that is not our kill.
    if (!slot?.child || slot.crashes.length > 0) return false;
    this.opts.onEvent?.({ kind: "killed", worker: index, workerId: slot.workerId, reason });
    slot.killedByUs = true;
    slot.child.kill("SIGKILL");
    return true;
  }

  /** SIGTERM every worker and wait for them to exit (SIGKILL after `timeoutMs`). */
  async stop(timeoutMs = 15_000): Promise<void> {
    this.stopping = true;
    const live = this.slots.filter((s) => s.child);
    for (const timer of this.thawTimers) clearTimeout(timer);
    for (const s of live) {
      s.child!.kill("SIGCONT"); // a frozen process cannot handle SIGTERM
      s.child!.kill("SIGTERM");
    }
    const timer = setTimeout(() => {
      for (const s of live) s.child?.kill("SIGKILL");
    }, timeoutMs);
    await Promise.all(live.map((s) => s.exited));
    clearTimeout(timer);
    rmSync(this.onceDir, { recursive: true, force: true });
  }

  /**
   * Watch `child`'s stdout for the lines a worker writes at a fault point: a crash line (it is
   * about to SIGKILL itself; say which point and job) or a freeze line (SIGCONT it `forMs` later).
   */
  private watchFaultLines(slot: Slot, child: ChildProcess, freezes: ReadonlyArray<{ point: string; forMs: number }>): void {
    let pending = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        if (line.includes(CRASH_LINE)) {
          // More than one when other slots reached targeted points of their own while the
          // process flushed its spans before dying: each of those crashes happened too.
          const { point, jobId } = JSON.parse(line) as { point: string; jobId: string | null };
          slot.crashes.push({ point, jobId });
          this.opts.onEvent?.({ kind: "crashed", worker: slot.index, workerId: slot.workerId, point, jobId });
        }
        if (!line.includes(FREEZE_LINE)) continue;
        const { point } = JSON.parse(line) as { point: string };
        const freeze = freezes.find((f) => f.point === point);
        if (!freeze) continue;
        this.freezesReached.push(point);
        this.opts.onEvent?.({ kind: "frozen", worker: slot.index, workerId: slot.workerId, point });
        const timer = setTimeout(() => {
          this.thawTimers.delete(timer);
          child.kill("SIGCONT");
          this.opts.onEvent?.({ kind: "thawed", worker: slot.index, workerId: slot.workerId, point });
        }, freeze.forMs);
        this.thawTimers.add(timer);
      }
    });
  }

  /** Spawn a new life for `slot`; resolves when it reports ready (or exits first). */
  private spawn(slot: Slot): Promise<void> {
    slot.life += 1;
    slot.workerId = `w${slot.index}.${slot.life}`;
    const crashAt = this.pendingCrashPoints.shift();
    slot.crashAt = crashAt;
    const freezes = slot.life === 1 ? (this.opts.freezes ?? []).filter((f) => f.worker === slot.index) : [];
    slot.crashes = [];
    const crashSpecs = [...(crashAt ? [crashAt] : []), ...(this.opts.targetedCrashes?.() ?? [])];
    const child = spawn(process.execPath, [...WORKER_NODE_FLAGS, WORKER_ENTRY], {
      env: workerNodeEnv({
        ...process.env,
        ...this.opts.env,
        WORKER_ID: slot.workerId,
        UPLOAD_PIPELINE_CRASH_AT: crashSpecs.join(","),
        UPLOAD_PIPELINE_CRASH_ONCE_DIR: this.onceDir,
        UPLOAD_PIPELINE_FREEZE_AT: freezes.map((f) => f.point).join(","),
      }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const log = createWriteStream(join(this.opts.logDir, `${slot.workerId}.log`));
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    if (freezes.length > 0 || crashSpecs.length > 0) this.watchFaultLines(slot, child, freezes);
    const ready = new Promise<void>((resolve) => {
      const onData = (chunk: Buffer) => {
        if (!chunk.toString().includes('"msg":"worker started"')) return;
        child.stdout!.off("data", onData);
        resolve();
      };
      child.stdout!.on("data", onData);
      child.once("exit", () => resolve());
    });
    slot.child = child;
    slot.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        slot.child = undefined;
        this.opts.onEvent?.({
          kind: "exited",
          worker: slot.index,
          workerId: slot.workerId,
          code,
          signal,
          byUs: Boolean(slot.killedByUs),
          crashAt: slot.crashAt,
        });
        // A targeted crash (one with a job) is not this life's own point: that one is given back.
        const reachedPoint = signal === "SIGKILL" && !slot.killedByUs && (slot.crashes.length === 0 || slot.crashes.some((c) => c.jobId === null));
        if (slot.crashAt) {
          if (reachedPoint) this.crashPointsReached.push(slot.crashAt);
          else this.pendingCrashPoints.unshift(slot.crashAt); // the next life takes it
        }
        if (signal === "SIGKILL") {
          this.kills += 1;
        } else if (!this.stopping) {
          // A process that exits on its own (bad config, a bug) is restarted a few times, then
          // left down: the run's deadline then fails the scenario and names the log to read.
          this.unexpectedExits += 1;
        }
        slot.killedByUs = false;
        if (!this.stopping && this.unexpectedExits <= 3) setTimeout(() => void (this.stopping || this.spawn(slot)), 100);
        resolve();
      });
    });
    this.opts.onEvent?.({ kind: "started", worker: slot.index, workerId: slot.workerId, life: slot.life });
    return ready;
  }
}
