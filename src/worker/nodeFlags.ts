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
