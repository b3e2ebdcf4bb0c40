/**
 * The V8 flags a worker process runs with. A running process cannot change them, so whatever
 * starts a worker passes them: `npm run worker` (package.json, and so the Docker image), the
 * scenario runner, the benchmarks and `npm run stack` all spawn `node ...WORKER_NODE_FLAGS
 * src/worker/main.ts`.
 *
 * `--max-semi-space-size=8` (MiB): V8 sizes the young generation from the heap limit, which it
 * derives from the machine's memory, not from what the program needs. On a 23 GiB machine the
 * worker's new space grew from 32 to 128 MiB while it embedded a 1 MiB document, all of it
 * resident; the worker's garbage is short-lived (one batch's answer, rows and buffers), so a
 * small young generation holds it. Measured (one worker, 1 MiB document, default batch size):
 * peak RSS 333 MiB without the flag, 216 MiB at 16, 193 MiB at 8, with no more CPU.
 */
export const WORKER_NODE_FLAGS: readonly string[] = ["--max-semi-space-size=8"];

/**
 * An allocator setting, not a fix in the program: glibc's malloc environment for a worker,
 * passed by whatever passes {@link WORKER_NODE_FLAGS} (`npm run worker` spells it out).
 *
 * `MALLOC_MMAP_THRESHOLD_=131072`: glibc serves a block of 128 KiB or more with its own mmap, but
 * by default it raises that threshold to the size of each such block freed (up to 32 MiB), after
 * which blocks that size come from the main arena and their pages stay with the process once
 * freed. A worker allocates multi-MB transient buffers on every batch (pg-protocol's writer
 * regrows each Bind message from 256 bytes, ~3 MB for 256 vectors; the ~2 MB embeddings answer),
 * so its arena grew from 24 to 79 MiB over a job. A fixed threshold keeps such blocks mmapped and
 * returns them on free. Measured (one worker, 10 MiB document, default settings, two runs each,
 * load 9–12): idle RSS 156 → 140 MiB, steady 259 → 224 MiB, peak 265 → 252 MiB, no more CPU
 * within the noise; `npm run bench -- --only memory` prints the figures with and without it.
 */
export const WORKER_ALLOCATOR_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: "131072" };

/** {@link WORKER_ALLOCATOR_ENV} as `NAME=value` words (a shell's or `env`'s spelling). */
export const WORKER_ALLOCATOR_ASSIGNMENTS: readonly string[] = Object.entries(WORKER_ALLOCATOR_ENV).map(([name, value]) => `${name}=${value}`);

/**
 * The worker flags this process was not started with (`execArgv` or `NODE_OPTIONS`), so that a
 * worker started some other way says so at start-up instead of quietly using more memory.
 *
 * @example
 * missingWorkerNodeFlags(["--max-semi-space-size=8"], undefined) // []
 */
export function missingWorkerNodeFlags(execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  const given = new Set([...execArgv, ...(nodeOptions ?? "").split(/\s+/)]);
  return WORKER_NODE_FLAGS.filter((flag) => !given.has(flag));
}

/**
 * The allocator settings missing from this process's environment (glibc read them when the
 * process started), so that a worker started without them says so.
 *
 * @example
 * missingWorkerAllocatorEnv({ MALLOC_MMAP_THRESHOLD_: "131072" }) // []
 */
export function missingWorkerAllocatorEnv(env: NodeJS.ProcessEnv): string[] {
  return WORKER_ALLOCATOR_ASSIGNMENTS.filter((assignment) => {
    const [name, value] = assignment.split("=");
    return env[name!] !== value;
  });
}
