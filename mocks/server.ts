/**
 * Serves the mocks over real HTTP so separate processes (workers, the API) can share them. Each
 * request goes through the very msw handlers used in-process (`getResponse`); a `reset` fault
 * destroys the socket, a `hang` holds it.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { getResponse } from "msw";
import { createMocks, type MockOptions, type MockState, type Mocks } from "./index.ts";
import { signServiceRoleKey } from "./storage/jwt.ts";

/** Options of {@link startMockServer}: the mock options plus where to listen. */
export interface MockServerOptions extends MockOptions {
  /** Port to listen on; 0 (default) picks a free one. */
  port?: number;
  /** Interface to listen on. Default `127.0.0.1`. */
  host?: string;
  /** Largest request body accepted (bytes). Default 512 MiB. */
  maxBodyBytes?: number;
}

/** A running mock server. */
export interface MockServer {
  /** `http://host:port`, no trailing slash. */
  baseUrl: string;
  /** Base URLs to give each client: `openai` ends in `/v1`, `storage` in `/storage/v1`. */
  urls: { openai: string; llamaparse: string; storage: string; admin: string };
  /** The environment a worker needs to use these mocks (keys included; they are mock keys). */
  env: Record<string, string>;
  state: MockState;
  mocks: Mocks;
  close(): Promise<void>;
}

/** An error in the shape of the service the path belongs to (OpenAI, Storage, LlamaParse's FastAPI). */
export function serviceError(url: string, method: string, status: 404 | 413, message: string): { status: number; body: unknown } {
  const path = url.split("?")[0] ?? "/";
  if (path.startsWith("/v1/")) {
    const text = status === 404 ? `Invalid URL (${method} ${path})` : `Request too large: ${message}`;
    return { status, body: { error: { message: text, type: "invalid_request_error", param: null, code: null } } };
  }
  if (path.startsWith("/storage/v1/")) {
    // Storage sends every error but a 500 as HTTP 400, the logical status in the body.
    const body =
      status === 404
        ? { statusCode: "404", error: "Not Found", message: `Route ${method}:${path} not found` }
        : { statusCode: "413", code: "EntityTooLarge", error: "Payload too large", message: "The object exceeded the maximum allowed size" };
    return { status: 400, body };
  }
  return { status, body: { detail: status === 404 ? "Not Found" : "Request Entity Too Large" } };
}

function send(res: ServerResponse, answer: { status: number; body: unknown }): void {
  res.writeHead(answer.status, { "content-type": "application/json", connection: "close" });
  res.end(JSON.stringify(answer.body));
}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        // Drain the rest unread so the 413 can still be answered on this connection.
        req.removeAllListeners("data");
        req.resume();
        reject(new Error("request body too large"));
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

/**
 * Starts the mocks on a real HTTP server.
 * @example
 * const server = await startMockServer({ port: 0, seed: 42 });
 * const openai = new OpenAI({ baseURL: server.urls.openai, apiKey: server.env.OPENAI_API_KEY });
 * // …
 * await server.close();
 */
export async function startMockServer(options: MockServerOptions = {}): Promise<MockServer> {
  const mocks = createMocks(options);
  const host = options.host ?? "127.0.0.1";
  const limit = options.maxBodyBytes ?? 512 * 1024 * 1024;
  const sockets = new Set<import("node:net").Socket>();
  let origin = "";

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const abort = new AbortController();
    res.on("close", () => {
      if (!res.writableFinished) abort.abort();
    });
    const headers = new Headers();
    for (let i = 0; i < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
    const method = req.method ?? "GET";
    let body: Buffer | undefined;
    try {
      body = method === "GET" || method === "HEAD" ? undefined : await readBody(req, limit);
    } catch {
      return void send(res, serviceError(req.url ?? "/", method, 413, `request body larger than ${limit} bytes`));
    }
    const request = new Request(new URL(req.url ?? "/", origin), { method, headers, body: body ? new Uint8Array(body) : undefined, signal: abort.signal });
    const response = await getResponse(mocks.handlers, request);
    if (!response) return void send(res, serviceError(req.url ?? "/", method, 404, `no route ${method} ${new URL(request.url).pathname}`));
    if (response.type === "error") {
      req.socket.destroy();
      return;
    }
    const out: string[] = [];
    response.headers.forEach((value, name) => {
      out.push(name, value);
    });
    const bytes = Buffer.from(await response.arrayBuffer());
    if (!response.headers.has("content-length") && method !== "HEAD" && response.status !== 304) out.push("content-length", String(bytes.length));
    res.writeHead(response.status, response.statusText || undefined, out);
    res.end(method === "HEAD" ? undefined : bytes);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (res.headersSent) return void res.destroy();
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: `mock server error: ${(error as Error).message}` }));
    });
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const hostPart = host.includes(":") ? `[${host}]` : host;
  origin = `http://${hostPart}:${port}`;
  const serviceRoleKey = await signServiceRoleKey(mocks.keys.jwtSecret);

  return {
    baseUrl: origin,
    urls: { openai: `${origin}/v1`, llamaparse: origin, storage: `${origin}/storage/v1`, admin: `${origin}/__admin` },
    env: {
      OPENAI_BASE_URL: `${origin}/v1`,
      OPENAI_API_KEY: mocks.keys.openai,
      LLAMA_CLOUD_BASE_URL: origin,
      LLAMA_CLOUD_API_KEY: mocks.keys.llamaCloud,
      SUPABASE_URL: origin,
      SUPABASE_SERVICE_ROLE_KEY: serviceRoleKey,
    },
    state: mocks.state,
    mocks,
    async close() {
      await mocks.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
    },
  };
}
