/**
 * Talking to the API as its users do: bearer JWTs as Supabase issues them (HS256 with the
 * project's JWT secret), multipart uploads, the retry route.
 */
import { SignJWT } from "jose";
import type { CorpusFile } from "./corpus.ts";

export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly jwtSecret: string,
  ) {}

  /** A user's access token (`role: authenticated`, `sub` = the user), or the service role's. */
  async token(userId: string | null): Promise<string> {
    const jwt = new SignJWT(userId ? { role: "authenticated" } : { role: "service_role" }).setProtectedHeader({ alg: "HS256", typ: "JWT" });
    if (userId) jwt.setSubject(userId);
    return jwt.setIssuedAt().setExpirationTime("1h").sign(new TextEncoder().encode(this.jwtSecret));
  }

  /** Direct multipart upload; returns the document and job ids. */
  async upload(file: CorpusFile): Promise<{ documentId: string; jobId: string; status: number }> {
    const form = new FormData();
    form.append("file", new Blob([file.bytes as BlobPart], { type: file.mime }), file.filename);
    const res = await fetch(`${this.baseUrl}/upload`, {
      method: "POST",
      headers: { authorization: `Bearer ${await this.token(file.userId)}` },
      body: form,
    });
    const body = (await res.json()) as { document_id?: string; job_id?: string; error?: { message: string } };
    if (!res.ok || !body.document_id || !body.job_id) {
      throw new Error(`upload of ${file.filename} failed: HTTP ${res.status} ${body.error?.message ?? ""}`);
    }
    return { documentId: body.document_id, jobId: body.job_id, status: res.status };
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
