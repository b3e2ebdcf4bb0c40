/**
 * Talking to the API as its users do: bearer JWTs as Supabase issues them (HS256 with the
 * project's JWT secret), multipart uploads, the retry route.
 */
import { SignJWT } from "jose";
import type { CorpusFile } from "./corpus.ts";

export class ApiClient {
  readonly baseUrl: string;
  private readonly jwtSecret: string;

  constructor(baseUrl: string, jwtSecret: string) {
    this.baseUrl = baseUrl;
    this.jwtSecret = jwtSecret;
  }

  /** A user's access token (`role: authenticated`, `aud: authenticated`, `sub` = the user), or the service role's. */
  async token(userId: string | null): Promise<string> {
    const claims = userId ? { role: "authenticated", aud: "authenticated" } : { role: "service_role" };
    const jwt = new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" });
    if (userId) jwt.setSubject(userId);
    return jwt.setIssuedAt().setExpirationTime("1h").sign(new TextEncoder().encode(this.jwtSecret));
  }

  /**
   * Direct multipart upload; returns the document and job ids. Like any well-behaved client it
   * retries a 429/5xx answer (the API says "retry shortly" while Storage is down) with backoff;
   * uploads are idempotent, so a retry can never make a second document.
   */
  async upload(file: CorpusFile, attempts = 12): Promise<{ documentId: string; jobId: string; status: number }> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.uploadOnce(file);
      } catch (err) {
        const status = (err as { status?: number }).status ?? 0;
        if (attempt >= attempts || (status !== 429 && status < 500)) throw err;
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      }
    }
  }

  private async uploadOnce(file: CorpusFile): Promise<{ documentId: string; jobId: string; status: number }> {
    const form = new FormData();
    if (file.priority) form.append("priority", file.priority);
    form.append("file", new Blob([file.bytes as BlobPart], { type: file.mime }), file.filename);
    const res = await fetch(`${this.baseUrl}/upload`, {
      method: "POST",
      headers: { authorization: `Bearer ${await this.token(file.userId)}` },
      body: form,
    });
    const body = (await res.json().catch(() => ({}))) as { document_id?: string; job_id?: string; error?: { message: string } };
    if (!res.ok || !body.document_id || !body.job_id) {
      throw Object.assign(new Error(`upload of ${file.filename} failed: HTTP ${res.status} ${body.error?.message ?? ""}`), { status: res.status });
    }
    return { documentId: body.document_id, jobId: body.job_id, status: res.status };
  }

  /** `GET /jobs/{document_id}` as the service role: the status body (src/api/README.md). */
  async status(documentId: string): Promise<{ profile: string | null; status: string; progress: { vectors: { stored: number } } }> {
    const res = await fetch(`${this.baseUrl}/jobs/${documentId}`, { headers: { authorization: `Bearer ${await this.token(null)}` } });
    if (!res.ok) throw new Error(`GET /jobs/${documentId} answered ${res.status}`);
    return (await res.json()) as { profile: string | null; status: string; progress: { vectors: { stored: number } } };
  }

  /** `POST /jobs/{document_id}/retry` as the operator (service role). */
  async retry(documentId: string): Promise<number> {
    const res = await fetch(`${this.baseUrl}/jobs/${documentId}/retry`, {
      method: "POST",
      headers: { authorization: `Bearer ${await this.token(null)}` },
    });
    await res.body?.cancel();
    return res.status;
  }
}
