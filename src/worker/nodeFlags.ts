import { fileURLToPath } from "node:url";

/**
 * The V8 flags and environment a worker process runs with. A running process cannot change
 * them, so whatever starts a worker passes them: `npm run worker` (package.json, and so the
 * Docker image), the scenario runner, the benchmarks and `npm run stack` all spawn
 * `node ...WORKER_NODE_FLAGS src/worker/main.ts` in `workerNodeEnv(env)`.
 *
 * `--max-semi-space-size=8` (MiB): V8 sizes the young generation from the heap limit, which it
 * derives from the machine's memory, not from what the program needs. On a 23 GiB machine the
 * worker's new space grew from 32 to 128 MiB while it embedded a 1 MiB document, all of it
 * resident; the worker's garbage is short-lived (one batch's answer, rows and buffers), so a
 * small young generation holds it. Measured (one worker, 1 MiB document, default batch size):
 * peak RSS 333 MiB without the flag, 216 MiB at 16, 193 MiB at 8, with no more CPU.
 *
 * `--max-old-space-size=512` (MiB): V8 grows the old generation by a factor it derives from the
 * heap limit, 4× on a 23 GiB machine, so promoted garbage (one embedding batch's answer after
 * another) piled up to the 10 MiB document's peak before a full collection. Under a limit of
 * 512 MiB the factor is about 1.4×. The live heap of a worker stays under 45 MiB through a 10 MiB
 * document (`process.memoryUsage()` sampled every 500 ms); the largest heap a worker needs is
 * the reconciler's parse intake, which holds LlamaParse's whole answer: for 50 MiB of markdown
 * (UPLOAD_MAX_BYTES' default) with a non-Latin-1 character on each of 200 pages, so every string
 * is two bytes a character, a script doing what intake does with it (JSON.parse of the answer,
 * the page join, the hash, the upload's Buffer) under these flags peaked at 205 MiB of heap.
 * Measured by `npm run bench -- --only memory`, runs interleaved on one machine (4 Dec, load
 * 0.4-0.7): peak RSS through a 10 MiB document 254 → 181 MiB, steady 230 → 178 MiB, 10× ÷ 1×
 * ratio 1.33 → 1.05, worker CPU for that document 5.5-6.7 → 6.6-6.8 s (within the noise). At
 * 1024 MiB the peak was 201 MiB; at 256 MiB the worker spent 10 CPU-seconds (full collections).
 *
 * `--expose-gc`: the only way a program can ask V8 for a memory-reducing collection, which
 * returns the heap pages V8 pools after a stage's transient peak (`heapTrim.ts`).
 */
export const WORKER_NODE_FLAGS: readonly string[] = ["--max-semi-space-size=8", "--max-old-space-size=512", "--expose-gc"];

/**
 * Node's compile cache, beside the dependencies (`npm run worker` names the same folder relative
 * to the package root). A worker whose modules are in it starts without loading the TypeScript
 * stripper (amaro, a WASM module) or parsing the tokenizer's 1.2 MB table again: 30 MiB less idle
 * RSS (146 → 116 MiB with every service module imported) and a faster start. Node keys each entry
 * by the file's content and its own version, so an edited file is compiled afresh.
 */
export const WORKER_COMPILE_CACHE = fileURLToPath(new URL("../../node_modules/.cache/node-compile-cache", import.meta.url));

/**
 * glibc's mmap threshold in bytes (`MALLOC_MMAP_THRESHOLD_`, read by glibc when the process
 * starts; musl ignores it). Left alone, glibc raises the threshold to the largest block freed so
 * far, up to 32 MiB: after the first embedding batch freed its ~2 MB answer and ~3 MB Bind
 * message, every later batch's buffers came from the main arena, whose freed pages stay
 * resident (14 MiB idle, 20-42 MiB while embedding). Fixed at 1 MiB, blocks that large are
 * mapped and given back when freed. Measured with the heap trim in place, interleaved on one
 * machine (4 Dec, 10 MiB document): steady RSS 140-147 MiB against 155-163 MiB without it, for
 * the same worker CPU (6.6-7.5 against 6.7-7.3 s). 128 KiB gave the same memory.
 */
export const WORKER_MALLOC_MMAP_THRESHOLD = String(1024 * 1024);

/** The environment a worker starts with, under the caller's own (a NODE_COMPILE_CACHE or MALLOC_MMAP_THRESHOLD_ it sets wins). */
export function workerNodeEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { NODE_COMPILE_CACHE: WORKER_COMPILE_CACHE, MALLOC_MMAP_THRESHOLD_: WORKER_MALLOC_MMAP_THRESHOLD, ...env };
}

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
