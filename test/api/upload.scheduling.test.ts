/**
 * Upload fields for scheduling (issue 12): `priority` picks the job's lane on both upload forms
 * (kept on the document until finalize creates the job); `tenant_id` names the fair-share tenant
 * and only a service-role caller may send it.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { documentId, jobId, sha256 } from "../../src/ids.ts";
import { useTestApp, bearer, multipartBody, snapshot, token } from "./helpers.ts";

const ctx = useTestApp();

async function multipart(auth: Record<string, string>, content: string, fields: Record<string, string>) {
  const { payload, headers } = multipartBody({ name: "a.txt", type: "text/plain", content }, fields);
  return ctx.t.app.inject({ method: "POST", url: "/upload", payload, headers: { ...headers, ...auth } });
}

async function jobScheduling(docId: string) {
  const { rows } = await ctx.db.pool.query("SELECT lane, tenant_id FROM upload_pipeline.upload_jobs WHERE document_id = $1", [docId]);
  return rows[0];
}

describe("upload scheduling fields", () => {
  it("priority bulk puts the job in the bulk lane; without it the job is interactive and the user is the tenant", async () => {
    const user = randomUUID();
    const bulk = await multipart(await bearer(user), `bulk ${randomUUID()}`, { priority: "bulk" });
    expect(bulk.statusCode, bulk.body).toBe(201);
    expect(await jobScheduling(bulk.json().document_id)).toEqual({ lane: "bulk", tenant_id: user });
    const plain = await multipart(await bearer(user), `plain ${randomUUID()}`, {});
    expect(await jobScheduling(plain.json().document_id)).toEqual({ lane: "interactive", tenant_id: user });
  });

  it("a service-role caller names the tenant; a user who tries gets 403 and nothing changes", async () => {
    const user = randomUUID();
    const service = { authorization: `Bearer ${await token({ role: "service_role", sub: user })}` };
    const ok = await multipart(service, `org ${randomUUID()}`, { tenant_id: "acme-corp" });
    expect(ok.statusCode, ok.body).toBe(201);
    expect(await jobScheduling(ok.json().document_id)).toEqual({ lane: "interactive", tenant_id: "acme-corp" });

    const before = await snapshot(ctx.db.pool);
    const refused = await multipart(await bearer(user), `mine ${randomUUID()}`, { tenant_id: "acme-corp" });
    expect(refused.statusCode).toBe(403);
    expect(refused.json().error.code).toBe("tenant_forbidden");
    expect(refused.json().error.message).toContain("tenant_id");
    expect(await snapshot(ctx.db.pool)).toEqual(before);
  });

  it("a bad priority or tenant_id is a 400 naming the field", async () => {
    const user = randomUUID();
    const res = await multipart(await bearer(user), `x ${randomUUID()}`, { priority: "urgent" });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toContain("priority");
    const signed = await ctx.t.app.inject({
      method: "POST",
      url: "/upload",
      payload: JSON.stringify({ filename: "a.pdf", mime: "application/pdf", bytes: 3, sha256: sha256("abc"), tenant_id: "no spaces allowed" }),
      headers: { "content-type": "application/json", authorization: `Bearer ${await token({ role: "service_role", sub: user })}` },
    });
    expect(signed.statusCode).toBe(400);
    expect(signed.json().error.message).toContain("tenant_id");
  });

  it("the signed-URL form keeps the priority until finalize creates the job", async () => {
    const user = randomUUID();
    const content = `%PDF-1.7 signed ${randomUUID()}`;
    const body = { filename: "p.pdf", mime: "application/pdf", bytes: content.length, sha256: sha256(content), priority: "bulk" };
    const first = await ctx.t.app.inject({
      method: "POST",
      url: "/upload",
      payload: JSON.stringify(body),
      headers: { "content-type": "application/json", ...(await bearer(user)) },
    });
    expect(first.statusCode, first.body).toBe(201);
    const doc = documentId(user, sha256(content));
    ctx.t.store.put(first.json().upload.path, content);
    const done = await ctx.t.app.inject({ method: "POST", url: `/upload/${doc}/finalize`, headers: await bearer(user) });
    expect(done.json()).toMatchObject({ job_id: jobId(doc), status: "uploaded" });
    expect(await jobScheduling(doc)).toEqual({ lane: "bulk", tenant_id: user });
  });
});
