/**
 * The runner's span collector: a tiny OTLP/HTTP JSON receiver on loopback that the worker
 * processes export to through the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, and
 * `OTEL_BSP_SCHEDULE_DELAY` so a SIGKILL loses at most that much), plus an in-process exporter
 * for the API, which runs inside the runner. After a run it picks a few documents and keeps
 * their spans as plain data for the waterfall in report.html. Spans are only buffered while a
 * run is going; nothing here sits on a worker's path but the export the SDK does anyway.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { SpanKind } from "@opentelemetry/api";
import { SimpleSpanProcessor, type ReadableSpan, type SpanExporter } from "@opentelemetry/sdk-trace-base";
import type pg from "pg";
import { z } from "zod";
import { startTracing, type Tracing } from "../src/tracing.ts";
import type { DocumentTrace, TimelineMark, TraceSpan } from "./report/types.ts";

/** Spans the runner keeps per scenario for the report. */
export const TRACED_DOCUMENTS = 3;
/** The span put back for one a SIGKILLed worker was inside. */
export const UNFINISHED = "unfinished (worker killed)";
/** How often the workers export (the SDK's default is 5 s, which a SIGKILL would mostly lose). */
export const WORKER_EXPORT_DELAY_MS = 200;

const AnyValue = z.object({
  stringValue: z.string().optional(),
  intValue: z.union([z.string(), z.number()]).optional(),
  doubleValue: z.number().optional(),
  boolValue: z.boolean().optional(),
});
const KeyValue = z.object({ key: z.string(), value: AnyValue.optional() });
const OtlpSpan = z.object({
  traceId: z.string(),
  spanId: z.string(),
  parentSpanId: z.string().optional(),
  name: z.string(),
  kind: z.number().optional(),
  startTimeUnixNano: z.union([z.string(), z.number()]),
  endTimeUnixNano: z.union([z.string(), z.number()]),
  attributes: z.array(KeyValue).optional(),
  status: z.object({ code: z.number().optional() }).optional(),
});
/** ExportTraceServiceRequest, JSON encoding (hex ids, string nanoseconds), the fields we read. */
const ExportRequest = z.object({
  resourceSpans: z.array(
    z.object({
      resource: z.object({ attributes: z.array(KeyValue).optional() }).optional(),
      scopeSpans: z.array(z.object({ spans: z.array(OtlpSpan).optional() })).optional(),
    }),
  ),
});

/** A collected span: the report's form plus its trace and parent, for picking and nesting. */
interface Collected extends TraceSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string | undefined;
}

const KINDS: Record<number, TraceSpan["kind"]> = { [SpanKind.SERVER]: "server", [SpanKind.CLIENT]: "client" };
/** OTLP numbers span kinds from 1 (SPAN_KIND_INTERNAL); the API's SpanKind from 0. */
const otlpKind = (kind: number | undefined): TraceSpan["kind"] => KINDS[(kind ?? 1) - 1] ?? "internal";

const scalarOf = (v: z.infer<typeof AnyValue> | undefined): string | number | boolean | undefined =>
  v?.stringValue ?? (v?.intValue !== undefined ? Number(v.intValue) : (v?.doubleValue ?? v?.boolValue));

function attributesOf(list: ReadonlyArray<z.infer<typeof KeyValue>> | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const kv of list ?? []) {
    const v = scalarOf(kv.value);
    if (v !== undefined) out[kv.key] = v;
  }
  return out;
}

function toCollected(s: {
  traceId: string;
  spanId: string;
  parentSpanId?: string | undefined;
  name: string;
  kind: TraceSpan["kind"];
  startMs: number;
  endMs: number;
  attributes: Record<string, unknown>;
  failed: boolean;
  process: string;
}): Collected {
  const a = s.attributes;
  return {
    traceId: s.traceId,
    spanId: s.spanId,
    parentSpanId: s.parentSpanId || undefined,
    name: s.name,
    kind: s.kind,
    startMs: s.startMs,
    endMs: s.endMs,
    process: typeof a["worker.id"] === "string" ? a["worker.id"] : s.process,
    ...(typeof a["job.attempt"] === "number" ? { attempt: a["job.attempt"] } : {}),
    ...(s.failed || a["error.type"] !== undefined ? { error: String(a["error.type"] ?? "error") } : {}),
    ...(typeof a["http.response.status_code"] === "number" ? { status: a["http.response.status_code"] } : {}),
  };
}

export class SpanCollector {
  private spans: Collected[] = [];
  private server?: Server;
  private tracing?: Tracing | undefined;
  /** The receiver's base URL: what `OTEL_EXPORTER_OTLP_ENDPOINT` is set to. */
  endpoint = "";

  /** Listen on loopback and trace the in-process API into the same buffer. */
  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const ok = req.method === "POST" && req.url === "/v1/traces" && this.receive(Buffer.concat(chunks));
        res.writeHead(ok ? 200 : 400, { "content-type": "application/json" }).end(ok ? "{}" : '{"message":"expected an OTLP/HTTP JSON trace export"}');
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    const exporter: SpanExporter = {
      export: (spans, done) => {
        for (const s of spans) this.spans.push(fromReadable(s));
        done({ code: 0 });
      },
      shutdown: async () => {},
    };
    this.tracing = startTracing({ processors: [new SimpleSpanProcessor(exporter)], serviceName: "upload-pipeline-api" });
  }

  /** The variables that make a worker process export here. */
  workerEnv(): Record<string, string> {
    return { OTEL_EXPORTER_OTLP_ENDPOINT: this.endpoint, OTEL_BSP_SCHEDULE_DELAY: String(WORKER_EXPORT_DELAY_MS) };
  }

  private receive(body: Buffer): boolean {
    let parsed: z.infer<typeof ExportRequest>;
    try {
      parsed = ExportRequest.parse(JSON.parse(body.toString("utf8")));
    } catch {
      return false;
    }
    for (const rs of parsed.resourceSpans) {
      const resource = attributesOf(rs.resource?.attributes);
      const service = String(resource["service.instance.id"] ?? resource["service.name"] ?? "unknown");
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) {
          this.spans.push(
            toCollected({
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId,
              name: s.name,
              kind: otlpKind(s.kind),
              startMs: Number(BigInt(s.startTimeUnixNano) / 1000n) / 1000,
              endMs: Number(BigInt(s.endTimeUnixNano) / 1000n) / 1000,
              attributes: attributesOf(s.attributes),
              failed: s.status?.code === 2,
              process: service,
            }),
          );
        }
      }
    }
    return true;
  }

  /**
   * Take this run's spans (emptying the buffer) and keep the traces of up to `TRACED_DOCUMENTS`
   * of `documentIds`: those a worker was killed inside first, then those several workers ran,
   * then those with retries or errors, then the first one.
   */
  async take(pool: pg.Pool, documentIds: readonly string[], kills: readonly TimelineMark[] = []): Promise<DocumentTrace[]> {
    const spans = this.spans;
    this.spans = [];
    const { rows } = await pool.query<{ document_id: string; status: string; traceparent: string | null }>(
      "SELECT document_id, status, traceparent FROM upload_pipeline.upload_jobs WHERE document_id = ANY($1) AND traceparent IS NOT NULL",
      [documentIds],
    );
    const byTrace = new Map<string, Collected[]>();
    for (const s of spans) byTrace.set(s.traceId, [...(byTrace.get(s.traceId) ?? []), s]);
    const candidates = rows.flatMap((r) => {
      const traceId = r.traceparent!.split("-")[1]!;
      const own = withUnfinished(byTrace.get(traceId) ?? [], kills);
      if (own.length === 0) return [];
      const killedInside = own.some((s) => s.name === UNFINISHED);
      const workers = new Set(own.filter((s) => s.name.startsWith("stage ")).map((s) => s.process)).size;
      const troubles = own.filter((s) => s.error !== undefined || ["retry", "parked", "dead_letter"].includes(s.name)).length;
      return [{ documentId: r.document_id, status: r.status, traceId, spans: own, score: (killedInside ? 2000 : 0) + (workers > 1 ? 1000 : 0) + troubles }];
    });
    candidates.sort((a, b) => b.score - a.score || documentIds.indexOf(a.documentId) - documentIds.indexOf(b.documentId));
    return candidates.slice(0, TRACED_DOCUMENTS).map((c) => ({ documentId: c.documentId, status: c.status, traceId: c.traceId, spans: ordered(c.spans) }));
  }

  async stop(): Promise<void> {
    await this.tracing?.shutdown();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/**
 * A span that never ended (its worker was SIGKILLed inside it) is never exported, but its ended
 * children are: put back one `unfinished` span per missing parent of a killed worker's spans,
 * from its first child's start to the kill, so the waterfall shows where the worker died.
 */
function withUnfinished(spans: Collected[], kills: readonly TimelineMark[]): Collected[] {
  const ids = new Set(spans.map((s) => s.spanId));
  const orphans = new Map<string, Collected[]>();
  for (const s of spans) {
    if (s.process === "api" || !s.parentSpanId || ids.has(s.parentSpanId)) continue;
    if (!kills.some((k) => k.kind === "kill" && k.worker === s.process)) continue;
    orphans.set(s.parentSpanId, [...(orphans.get(s.parentSpanId) ?? []), s]);
  }
  const added = [...orphans.entries()].map(([spanId, children]): Collected => {
    const first = children[0]!;
    const startMs = Math.min(...children.map((c) => c.startMs));
    const lastEnd = Math.max(...children.map((c) => c.endMs));
    const kill = kills.find((k) => k.kind === "kill" && k.worker === first.process && k.atMs >= lastEnd);
    return {
      traceId: first.traceId,
      spanId,
      name: UNFINISHED,
      kind: "internal",
      process: first.process,
      startMs,
      endMs: kill?.atMs ?? lastEnd,
      error: "killed",
    };
  });
  return [...spans, ...added];
}

/** Spans in start order, each with its depth under its parent (a parent outside the trace's spans: depth 0). */
function ordered(spans: Collected[]): TraceSpan[] {
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const depth = (s: Collected, seen = 0): number => {
    const parent = s.parentSpanId ? byId.get(s.parentSpanId) : undefined;
    return parent && seen < 10 ? 1 + depth(parent, seen + 1) : 0;
  };
  return [...spans]
    .sort((a, b) => a.startMs - b.startMs || a.endMs - b.endMs)
    .map(({ traceId: _t, spanId: _s, parentSpanId: _p, ...s }) => ({ ...s, depth: depth(byId.get(_s)!) }));
}

function fromReadable(s: ReadableSpan): Collected {
  const ms = ([sec, ns]: [number, number]) => sec * 1000 + ns / 1e6;
  return toCollected({
    traceId: s.spanContext().traceId,
    spanId: s.spanContext().spanId,
    parentSpanId: s.parentSpanContext?.spanId,
    name: s.name,
    kind: KINDS[s.kind] ?? "internal",
    startMs: ms(s.startTime),
    endMs: ms(s.endTime),
    attributes: s.attributes,
    failed: s.status.code === 2,
    process: "api",
  });
}
