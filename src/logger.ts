/**
 * pino JSON logs. Every line a worker writes about a job carries `correlation_id`, `job_id`,
 * `stage` and `worker_id` (the worker's child logger per job run). Secrets are redacted by key name as a last line of
 * defence; the code never logs them on purpose.
 */
import { pino, type Logger } from "pino";

export type { Logger };

export const REDACT_PATHS = [
  "apiKey",
  "*.apiKey",
  "authorization",
  "*.authorization",
  "headers.authorization",
  "webhook_secret",
  "*.webhook_secret",
  "webhookSecret",
  "*.webhookSecret",
  "serviceRoleKey",
  "*.serviceRoleKey",
];

export function createLogger(options: { level?: string; name?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      level: options.level ?? "info",
      name: options.name,
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination as pino.DestinationStream | undefined,
  );
}
