/**
 * The operation each external request is, named from its method and path, for the client spans
 * of `tracedFetch` (src/tracing.ts). One name per kind of call a waterfall reader cares about:
 * LlamaParse submit, poll and download (a `get` that expands the markdown), OpenAI embeddings,
 * Storage upload, download and its metadata calls.
 */
export type OperationOf = (method: string, url: URL) => string;

export const llamaparseOperation: OperationOf = (method, url) => {
  const path = url.pathname;
  if (path.endsWith("/cancel")) return "cancel";
  if (method === "POST") return "submit";
  if (/\/parse\/?$/.test(path)) return "list";
  return /markdown|text/.test(url.search) ? "download" : "poll";
};

export const openaiOperation: OperationOf = (_method, url) => /\/(embeddings|files|batches)\b/.exec(url.pathname)?.[1] ?? "request";

export const storageOperation: OperationOf = (method, url) => {
  const path = url.pathname;
  if (path.includes("/object/info/")) return "info";
  if (path.includes("/object/upload/sign/")) return method === "PUT" ? "upload" : "sign_upload";
  if (path.includes("/object/sign/")) return "sign";
  if (method === "DELETE") return "remove";
  if (method === "GET") return "download";
  if (method === "HEAD") return "exists";
  return method === "POST" || method === "PUT" ? "upload" : "request";
};
