/**
 * Graceful shutdown for long-running processes (the worker and the API): the first SIGTERM/SIGINT calls `stop()` (stop
 * claiming, let current jobs reach a consistent state, release leases, close pools); a second
 * signal, or `timeoutMs` without finishing, exits at once. Leases left behind by a hard exit
 * simply expire, and another worker resumes the jobs.
 */
import type { Logger } from "./logger.ts";

export function stopOnSignals(stop: () => Promise<void>, log: Logger, timeoutMs: number): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, "shutting down");
    setTimeout(() => {
      log.error({ timeout_ms: timeoutMs }, "shutdown timed out: exiting");
      process.exit(1);
    }, timeoutMs).unref();
    stop().then(
      () => process.exit(0),
      (err: Error) => {
        log.error({ err: err.message }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}
