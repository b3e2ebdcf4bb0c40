/**
 * OpenTelemetry traces, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set: one trace per document.
 *
 * The API's upload (or finalize) request is the trace's root span; the job row it creates keeps
 * its W3C `traceparent` (migration 0008). The webhook intake, every stage run on any worker (after
 * a crash too), every retry, park and dead letter, and every external call made meanwhile (client
 * spans from `tracedFetch`) join that trace. A job created without tracing gets a `document` root
 * span from the first stage that runs. Without a registered provider `@opentelemetry/api` hands
 * out no-op spans and nothing here touches the database.
 */
import {
  context,
  INVALID_SPAN_CONTEXT,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
} from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base";
import type pg from "pg";
import { coerceError } from "./errors.ts";

const TRACER = "upload-pipeline";
let enabled = false;

export interface Tracing {
  /** Export what is buffered (before a deliberate crash, so the trace shows what led to it). */
  forceFlush(): Promise<void>;
  /** Flush and unregister (the process goes on untraced). */
  shutdown(): Promise<void>;
}

/**
 * Register a provider exporting to `endpoint` (OTLP/HTTP, JSON), or with the given processors
 * (tests, the scenario runner's in-process API). `serviceName` and `instanceId` name the process
 * in each span (`service.name`, `service.instance.id`). The batch processor reads the standard
 * `OTEL_BSP_*` variables (delay, queue and batch sizes).
 */
export function startTracing(options: {
  endpoint?: string | undefined;
  processors?: SpanProcessor[];
  serviceName?: string;
  /** `service.instance.id`: which worker (its `WORKER_ID`). */
  instanceId?: string | undefined;
}): Tracing | undefined {
  const processors =
    options.processors ??
    (options.endpoint ? [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${options.endpoint.replace(/\/$/, "")}/v1/traces` }))] : []);
  if (processors.length === 0) return undefined;
  const provider = new BasicTracerProvider({
    spanProcessors: processors,
    resource: resourceFromAttributes({
      ...(options.serviceName ? { "service.name": options.serviceName } : {}),
      ...(options.instanceId ? { "service.instance.id": options.instanceId } : {}),
    }),
  });
  // Spans of external calls find their stage's span through the async context.
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  enabled = true;
  return {
    forceFlush: () => provider.forceFlush(),
    async shutdown() {
      await provider.shutdown();
      enabled = false;
      trace.disable();
      context.disable();
      propagation.disable();
    },
  };
}

export const tracingEnabled = (): boolean => enabled;

/** The active span's `traceparent` (what a job row keeps), or undefined when tracing is off. */
export function currentTraceparent(): string | undefined {
  if (!enabled) return undefined;
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

/** The context a stored `traceparent` names (the root context when there is none). */
export function contextOf(traceparent: string | null | undefined): Context {
  return traceparent ? propagation.extract(ROOT_CONTEXT, { traceparent }) : ROOT_CONTEXT;
}

/**
 * Run `fn` inside a new span under `parent` (default: the active context); an error it throws is
 * recorded on the span (its `code`, class and message: never a payload) and rethrown. The span
 * ends with `fn` unless `keepOpen` (its owner ends it). A plain call when tracing is off.
 */
export async function inSpan<T>(
  name: string,
  options: { kind?: SpanKind; attributes?: Attributes; parent?: Context; keepOpen?: boolean },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  if (!enabled) return fn(trace.wrapSpanContext(INVALID_SPAN_CONTEXT));
  const parent = options.parent ?? context.active();
  const span = trace.getTracer(TRACER).startSpan(name, { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes ?? {} }, parent);
  try {
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (err) {
    recordError(span, err);
    throw err;
  } finally {
    // A server span ends when its answer is sent (src/api/requestSpans.ts), not when the handler returns.
    if (!options.keepOpen) span.end();
  }
}

/** Mark `span` failed with the error's stable code and class (`error.type`, as the conventions name it). */
export function recordError(span: Span, err: unknown): void {
  const e = coerceError(err);
  span.setAttributes({ "error.type": e.code, "error.class": e.errorClass });
  span.recordException({ name: e.name, message: e.message });
  span.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
}

/** The document's trace context: from the job row, or a new root span recorded in it. */
async function documentContext(pool: pg.Pool, job: { job_id: string; document_id: string }): Promise<Context> {
  const { rows } = await pool.query<{ traceparent: string | null }>("SELECT traceparent FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.job_id]);
  const stored = rows[0]?.traceparent;
  if (stored) return contextOf(stored);
  const root = trace.getTracer(TRACER).startSpan("document", { attributes: { "document.id": job.document_id, "job.id": job.job_id } }, ROOT_CONTEXT);
  root.end();
  const carrier: Record<string, string> = {};
  propagation.inject(trace.setSpan(ROOT_CONTEXT, root), carrier);
  // Two workers racing here: the first write wins and both read it back.
  const { rows: kept } = await pool.query<{ traceparent: string }>(
    `UPDATE upload_pipeline.upload_jobs SET traceparent = coalesce(traceparent, $2) WHERE job_id = $1 RETURNING traceparent`,
    [job.job_id, carrier.traceparent],
  );
  return contextOf(kept[0]?.traceparent ?? carrier.traceparent);
}

type TracedJob = { job_id: string; document_id: string; status: string; attempts: number };

/** Run one stage inside a span of the document's trace (a plain call when tracing is off). */
export async function traceStage<T>(pool: pg.Pool, job: TracedJob, stage: string, workerId: string, fn: () => Promise<T>): Promise<T> {
  if (!enabled) return fn();
  const parent = await documentContext(pool, job);
  const attributes = { "job.id": job.job_id, "document.id": job.document_id, "job.status": job.status, "job.attempt": job.attempts, "worker.id": workerId };
  return inSpan(`stage ${stage}`, { attributes, parent }, () => fn());
}

/**
 * How a failed run of a job was settled (retry with backoff, park, dead letter), as a zero-length
 * span of the document's trace carrying the attempt number and the error's code: the stage's own
 * span has ended by then, and a crash-free retry is otherwise invisible in the waterfall.
 */
export async function traceSettlement(
  pool: pg.Pool,
  job: TracedJob,
  workerId: string,
  settled: { outcome: "retry" | "parked" | "dead_letter"; code: string; errorClass: string; delayMs?: number | undefined },
): Promise<void> {
  if (!enabled) return;
  const parent = await documentContext(pool, job);
  const attributes: Attributes = {
    "job.id": job.job_id,
    "document.id": job.document_id,
    "job.status": job.status,
    "job.attempt": job.attempts,
    "worker.id": workerId,
    "error.type": settled.code,
    "error.class": settled.errorClass,
    ...(settled.delayMs !== undefined ? { "retry.delay_ms": settled.delayMs } : {}),
  };
  trace.getTracer(TRACER).startSpan(settled.outcome, { attributes }, parent).end();
}

/**
 * `fetch` for one external service whose every request is a client span of the active context,
 * with the HTTP semantic-convention attributes (`http.request.method`, `server.address`,
 * `server.port`, `http.response.status_code`, `error.type`) and the operation `operationOf`
 * names. No URL path, query, header or body is recorded: they carry signed tokens, object names
 * and document text. Calls the global `fetch` at call time (msw patches it in tests).
 */
export function tracedFetch(service: string, operationOf: (method: string, url: URL) => string, base?: typeof fetch): typeof fetch {
  const send: typeof fetch = (input, init) => (base ?? globalThis.fetch)(input, init);
  if (!enabled) return send;
  return async (input, init) => {
    const request = input instanceof Request ? input : undefined;
    const url = new URL(request ? request.url : String(input));
    const method = (init?.method ?? request?.method ?? "GET").toUpperCase();
    const operation = operationOf(method, url);
    const attributes: Attributes = {
      "http.request.method": method,
      "server.address": url.hostname,
      "server.port": Number(url.port || (url.protocol === "https:" ? 443 : 80)),
      "peer.service": service,
      "upload_pipeline.operation": operation,
    };
    return inSpan(`${service} ${operation}`, { kind: SpanKind.CLIENT, attributes }, async (span) => {
      const response = await send(input, init);
      span.setAttribute("http.response.status_code", response.status);
      if (response.status >= 400) {
        span.setAttribute("error.type", String(response.status));
        span.setStatus({ code: SpanStatusCode.ERROR });
      }
      return response;
    });
  };
}

/** Flush `tracing`'s spans, waiting at most `ms` (a collector that is down must not hold a crash up). */
export async function flushBounded(tracing: Tracing | undefined, ms = 1_000): Promise<void> {
  if (!tracing) return;
  await Promise.race([tracing.forceFlush().catch(() => {}), new Promise((resolve) => setTimeout(resolve, ms).unref())]);
}
