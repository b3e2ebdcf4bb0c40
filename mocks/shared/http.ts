/**
 * The glue between a fault plan and an msw resolver: {@link faulted} wraps a resolver so the
 * plan's latency, errors, outages, resets, hangs and malformed bodies apply to it, and every
 * answer is counted in the stats.
 */
import { HttpResponse } from "msw";
import type { FaultDecision, FaultEngine, FaultKind, ServiceName } from "./faults.ts";
import type { Rng } from "./rng.ts";
import type { MockStats } from "./stats.ts";

/** What every mock's handlers share: the plan, the counters and the clock. */
export interface MockContext {
  faults: FaultEngine;
  stats: MockStats;
  now: () => number;
  /** Aborted when the mocks close, to cut sleeps and hangs short. */
  closing: AbortSignal;
  /** Random per mock instance: ids the service would never repeat include it; fault draws never do. */
  instance: string;
}

/** Resolves after `ms`, or at once when either signal aborts. */
export function sleep(ms: number, ...signals: Array<AbortSignal | undefined>): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const live = signals.filter((s): s is AbortSignal => s !== undefined);
    if (live.some((s) => s.aborted)) return resolve();
    const done = () => {
      clearTimeout(timer);
      for (const s of live) s.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    for (const s of live) s.addEventListener("abort", done, { once: true });
  });
}

/** A JSON answer with the given status and headers. */
export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/** The HTML page a gateway answers with on 502/504: not JSON, as in production. */
export function gatewayPage(status: 502 | 504): Response {
  const title = status === 502 ? "502 Bad Gateway" : "504 Gateway Time-out";
  return new Response(`<html>\r\n<head><title>${title}</title></head>\r\n<body>\r\n<center><h1>${title}</h1></center>\r\n</body>\r\n</html>\r\n`, {
    status,
    headers: { "content-type": "text/html" },
  });
}

/** Cuts a successful body short at a seeded point (30–70 % of its length): a malformed answer. */
export async function malform(response: Response, rng: Rng): Promise<Response> {
  const bytes = new Uint8Array(await response.arrayBuffer());
  const cut = bytes.length === 0 ? 0 : Math.max(1, Math.floor(bytes.length * (0.3 + 0.4 * rng())));
  const body = bytes.length === 0 ? new TextEncoder().encode("{") : bytes.slice(0, cut);
  const headers = new Headers(response.headers);
  headers.delete("content-length");
  return new Response(body, { status: response.status, headers });
}

/** Options of {@link faulted}. */
export interface FaultedOptions {
  ctx: MockContext;
  service: ServiceName;
  route: string;
  /** The service's own body for an injected HTTP error. */
  errorResponse: (fault: Exclude<FaultKind, "reset" | "hang" | "malformed">, decision: FaultDecision, request: Request) => Response | Promise<Response>;
  /** Adds service-wide headers to every answer (e.g. OpenAI's `x-ratelimit-*`); gets an untouched copy of the request. */
  decorate?: (response: Response, request: Request, decision: FaultDecision) => Response | Promise<Response>;
  /**
   * What the request is, for the fault decision (gets an untouched copy of the request): the
   * same content must give the same fingerprint whatever the ids, times or multipart boundaries.
   * Default: the URL path (a Storage object path, say).
   */
  fingerprint?: (request: Request, params: Record<string, unknown>) => string | Promise<string>;
}

/** The default request fingerprint: the URL path, without the query (signed tokens change). */
export function pathFingerprint(request: Request): string {
  return decodeURIComponent(new URL(request.url).pathname);
}

type Resolver = (info: { request: Request; params: Record<string, unknown> }, decision: FaultDecision) => Response | Promise<Response>;

/**
 * Wraps `resolver` in the fault plan of `service` for requests to `route`.
 * A `reset` answers with `Response.error()` (msw turns it into a network error in-process; the
 * HTTP server destroys the socket); a `hang` holds the request until the client gives up,
 * `hangMs` passes or the mocks close, then resets.
 */
export function faulted(options: FaultedOptions, resolver: Resolver) {
  const { ctx, service, route } = options;
  return async (info: { request: Request; params: Record<string, unknown> }): Promise<Response> => {
    const request = info.request;
    const fingerprint = options.fingerprint ? await options.fingerprint(request.clone(), info.params) : pathFingerprint(request);
    const decision = ctx.faults.decide(service, route, fingerprint);
    const peek = options.decorate ? request.clone() : request;
    if (decision.latencyMs > 0) await sleep(decision.latencyMs, request.signal, ctx.closing);
    const fault = decision.fault;
    let response: Response;
    if (fault === "reset") {
      response = HttpResponse.error();
    } else if (fault === "hang") {
      await sleep(decision.hangMs, request.signal, ctx.closing);
      response = HttpResponse.error();
    } else if (fault !== undefined && fault !== "malformed") {
      response = await options.errorResponse(fault, decision, request);
    } else {
      response = await resolver(info, decision);
      if (fault === "malformed" && response.ok) response = await malform(response, decision.rng);
    }
    if (fault !== undefined) ctx.stats.recordFault(route, fault);
    if (response.type === "error") {
      ctx.stats.recordRequest(route, fault === "hang" ? "hang" : "reset");
      return response;
    }
    if (options.decorate) response = await options.decorate(response, peek, decision);
    ctx.stats.recordRequest(route, response.status);
    return response;
  };
}
