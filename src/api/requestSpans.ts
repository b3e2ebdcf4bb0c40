/**
 * Server spans for the API requests that belong to a document's trace: the upload (direct or
 * finalize), which starts the trace whose `traceparent` the job row keeps, and the webhook
 * delivery, which continues the trace named by its job's row. A route opts in by running its
 * work through `serveInSpan`; the span ends when the answer is sent, with its status code.
 */
import { propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, type Context, type Span } from "@opentelemetry/api";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { inSpan, tracingEnabled } from "../tracing.ts";

const open = new WeakMap<FastifyRequest, Span>();

/** End each request's span with the status actually sent (an error handler may have set it). */
export function registerRequestSpans(app: FastifyInstance): void {
  const end = (request: FastifyRequest, status: number | undefined) => {
    const span = open.get(request);
    if (!span) return;
    open.delete(request);
    if (status !== undefined) {
      span.setAttribute("http.response.status_code", status);
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    }
    span.end();
  };
  app.addHook("onResponse", async (request, reply) => end(request, reply.statusCode));
  app.addHook("onRequestAbort", async (request) => end(request, undefined));
}

/**
 * Run `fn` in a server span of `request` under `parent` (default: the caller's own `traceparent`
 * header, else a new trace). The span stays open until the response is sent.
 */
export function serveInSpan<T>(request: FastifyRequest, parent: Context | undefined, fn: () => Promise<T>): Promise<T> {
  if (!tracingEnabled()) return fn();
  const route = request.routeOptions.url ?? request.url.split("?")[0]!;
  const attributes = { "http.request.method": request.method, "http.route": route, "url.scheme": request.protocol };
  return inSpan(
    `${request.method} ${route}`,
    { kind: SpanKind.SERVER, attributes, parent: parent ?? propagation.extract(ROOT_CONTEXT, request.headers), keepOpen: true },
    (span) => {
      open.set(request, span);
      return fn();
    },
  );
}
