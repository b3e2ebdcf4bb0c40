/**
 * OpenTelemetry traces, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set: one trace per document.
 * The first stage that runs for a job opens the document's trace and writes its W3C
 * `traceparent` into the job row; every later stage, retry and resumed run (on any worker, after
 * a crash too) reads it back and adds its span to the same trace. Without a registered provider
 * `@opentelemetry/api` hands out no-op spans and nothing here touches the database.
 */
import { context, propagation, ROOT_CONTEXT, SpanStatusCode, trace, type Span } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { BasicTracerProvider, BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base";
import type pg from "pg";

const TRACER = "upload-pipeline";
let enabled = false;

/** Register a provider exporting to `endpoint` (OTLP/HTTP), or with the given processors (tests). */
export function startTracing(options: { endpoint?: string | undefined; processors?: SpanProcessor[] }): BasicTracerProvider | undefined {
  const processors =
    options.processors ??
    (options.endpoint ? [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${options.endpoint.replace(/\/$/, "")}/v1/traces` }))] : []);
  if (processors.length === 0) return undefined;
  const provider = new BasicTracerProvider({ spanProcessors: processors });
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  enabled = true;
  return provider;
}

/** The document's trace context: from the job row, or a new root span recorded in it. */
async function documentContext(pool: pg.Pool, job: { job_id: string; document_id: string }) {
  const { rows } = await pool.query<{ traceparent: string | null }>("SELECT traceparent FROM upload_pipeline.upload_jobs WHERE job_id = $1", [job.job_id]);
  const stored = rows[0]?.traceparent;
  if (stored) return propagation.extract(ROOT_CONTEXT, { traceparent: stored });
  const root = trace.getTracer(TRACER).startSpan("document", { attributes: { "document.id": job.document_id, "job.id": job.job_id } }, ROOT_CONTEXT);
  root.end();
  const carrier: Record<string, string> = {};
  propagation.inject(trace.setSpan(ROOT_CONTEXT, root), carrier);
  // Two workers racing here: the first write wins and both read it back.
  const { rows: kept } = await pool.query<{ traceparent: string }>(
    `UPDATE upload_pipeline.upload_jobs SET traceparent = coalesce(traceparent, $2) WHERE job_id = $1 RETURNING traceparent`,
    [job.job_id, carrier.traceparent],
  );
  return propagation.extract(ROOT_CONTEXT, { traceparent: kept[0]?.traceparent ?? carrier.traceparent! });
}

/** Run one stage inside a span of the document's trace (a plain call when tracing is off). */
export async function traceStage<T>(
  pool: pg.Pool,
  job: { job_id: string; document_id: string; status: string; attempts: number },
  stage: string,
  workerId: string,
  fn: () => Promise<T>,
): Promise<T> {
  if (!enabled) return fn();
  const parent = await documentContext(pool, job);
  const span: Span = trace
    .getTracer(TRACER)
    .startSpan(
      `stage ${stage}`,
      { attributes: { "job.id": job.job_id, "document.id": job.document_id, "job.status": job.status, "job.attempt": job.attempts, "worker.id": workerId } },
      parent,
    );
  try {
    return await context.with(trace.setSpan(parent, span), fn);
  } catch (err) {
    span.recordException(err as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
    throw err;
  } finally {
    span.end();
  }
}
