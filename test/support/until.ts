/**
 * Await a condition instead of sleeping a guessed time: poll `check` until it holds, or fail
 * naming what never happened. Real time (`performance.now`), so tests that move `Date.now` keep
 * real deadlines.
 */
export async function until(what: string, check: () => boolean | Promise<boolean>, { timeoutMs = 10_000, everyMs = 10 } = {}): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
