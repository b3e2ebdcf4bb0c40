/**
 * Who may do what: a user sees and retries only their own documents (404 for anyone else's,
 * exactly as for a missing one); the service role sees all; a bad token is 401 with one
 * generic body whatever was wrong with it.
 */
import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { FastifyRequest } from "fastify";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { createAuthenticator } from "../../src/api/auth.ts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../src/logger.ts";
import {
  createTestDatabase,
  bearer,
  JWT_SECRET,
  makeApp,
  multipartBody,
  parseEvent,
  seedJob,
  webhookRequest,
  serviceBearer,
  snapshot,
  token,
  type SeededJob,
  type TestApp,
  type TestDatabase,
} from "./helpers.ts";

let db: TestDatabase;
let t: TestApp;
let mine: SeededJob;
beforeAll(async () => {
  db = await createTestDatabase();
  t = await makeApp(db.pool);
  mine = await seedJob(db.pool, { status: "failed_parse" });
});
afterAll(async () => {
  await t.app.close();
  await db.drop();
});

describe("authorization", () => {
  it("the owner can read and retry; another user gets 404 and changes nothing", async () => {
    const stranger = await bearer(randomUUID());
    const before = await snapshot(db.pool);
    const read = await t.app.inject({ method: "GET", url: `/jobs/${mine.documentId}`, headers: stranger });
    expect(read.statusCode).toBe(404);
    const missing = await t.app.inject({ method: "GET", url: `/jobs/${randomUUID()}`, headers: stranger });
    expect(read.json().error.code).toBe(missing.json().error.code);
    expect((await t.app.inject({ method: "POST", url: `/jobs/${mine.documentId}/retry`, headers: stranger })).statusCode).toBe(404);
    expect((await t.app.inject({ method: "POST", url: `/upload/${mine.documentId}/finalize`, headers: stranger })).statusCode).toBe(404);
    expect(await snapshot(db.pool)).toEqual(before);
    expect((await t.app.inject({ method: "GET", url: `/jobs/${mine.documentId}`, headers: await bearer(mine.userId) })).statusCode).toBe(200);
  });

  it("the service role sees and retries every document", async () => {
    const job = await seedJob(db.pool, { status: "failed_embedding" });
    const headers = await serviceBearer();
    expect((await t.app.inject({ method: "GET", url: `/jobs/${job.documentId}`, headers })).statusCode).toBe(200);
    const res = await t.app.inject({ method: "POST", url: `/jobs/${job.documentId}/retry`, headers });
    expect(res.statusCode).toBe(200);
    const { rows } = await db.pool.query("SELECT detail FROM upload_pipeline.job_events WHERE job_id = $1 ORDER BY id DESC LIMIT 1", [job.jobId]);
    expect(rows[0].detail).toMatchObject({ actor: "operator", requested_by: "service_role" });
  });

  const badTokens: Array<[string, () => Promise<Record<string, string>>]> = [
    ["no header", async () => ({})],
    ["not Bearer", async () => ({ authorization: `Basic ${Buffer.from("a:b").toString("base64")}` })],
    ["garbage", async () => ({ authorization: "Bearer not.a.jwt" })],
    [
      "wrong secret",
      async () => ({ authorization: `Bearer ${await token({ sub: mine.userId }, { secret: "another-secret-another-secret-another-secret" })}` }),
    ],
    ["expired", async () => ({ authorization: `Bearer ${await token({ sub: mine.userId }, { expiresIn: Math.floor(Date.now() / 1000) - 3600 })}` })],
    ["no exp (it would never expire)", async () => ({ authorization: `Bearer ${await token({ sub: mine.userId }, { expiresIn: null })}` })],
    [
      "alg none",
      async () => {
        const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
        return {
          authorization: `Bearer ${enc({ alg: "none", typ: "JWT" })}.${enc({ sub: mine.userId, role: "service_role", exp: Math.floor(Date.now() / 1000) + 3600 })}.`,
        };
      },
    ],
    ["HS512", async () => ({ authorization: `Bearer ${await token({ sub: mine.userId }, { alg: "HS512" })}` })],
    ["anon key", async () => ({ authorization: `Bearer ${await token({ role: "anon" })}` })],
    ["sub not a uuid", async () => ({ authorization: `Bearer ${await token({ sub: "admin" })}` })],
    ["aud other", async () => ({ authorization: `Bearer ${await token({ sub: mine.userId, aud: "other" })}` })],
    ["no aud", async () => ({ authorization: `Bearer ${await token({ sub: mine.userId, aud: undefined })}` })],
    ["UUID sub, no role", async () => ({ authorization: `Bearer ${await token({ sub: mine.userId, role: undefined })}` })],
    ["role not a user's", async () => ({ authorization: `Bearer ${await token({ sub: mine.userId, role: "supabase_admin" })}` })],
    [
      "tampered payload",
      async () => {
        const [h, , s] = (await token({ sub: randomUUID() })).split(".");
        const p = Buffer.from(JSON.stringify({ sub: mine.userId, role: "service_role", exp: Math.floor(Date.now() / 1000) + 3600 })).toString("base64url");
        return { authorization: `Bearer ${h}.${p}.${s}` };
      },
    ],
  ];

  it.each(badTokens)("a bad token (%s) is 401 with the same generic body on every route", async (_name, headersOf) => {
    const headers = await headersOf();
    const before = await snapshot(db.pool);
    const { payload, headers: mp } = multipartBody({ name: "a.pdf", type: "application/pdf", content: "x" });
    const answers = await Promise.all([
      t.app.inject({ method: "GET", url: `/jobs/${mine.documentId}`, headers }),
      t.app.inject({ method: "POST", url: `/jobs/${mine.documentId}/retry`, headers }),
      t.app.inject({ method: "POST", url: "/upload", headers: { ...mp, ...headers }, payload }),
      t.app.inject({ method: "POST", url: "/upload", headers: { ...headers, "content-type": "application/json" }, payload: "{}" }),
      t.app.inject({ method: "POST", url: `/upload/${mine.documentId}/finalize`, headers }),
    ]);
    for (const res of answers) {
      expect(res.statusCode).toBe(401);
      expect(res.json()).toEqual({ error: { code: "unauthorized", message: expect.any(String) } });
      expect(res.headers["www-authenticate"]).toMatch(/^Bearer/);
    }
    expect(new Set(answers.map((a) => a.body)).size).toBe(1);
    expect(await snapshot(db.pool)).toEqual(before);
    expect(answers[0]!.body).not.toContain(JWT_SECRET);
  });

  it("tokens, signatures and secrets never reach the logs, even at trace level", async () => {
    const lines: string[] = [];
    const traced = await makeApp(db.pool, {
      log: createLogger({ level: "trace", destination: { write: (l: string) => lines.push(l) } as unknown as NodeJS.WritableStream }),
    });
    const job = await seedJob(db.pool);
    const good = await token({ sub: job.userId });
    const forged = await token({ sub: job.userId }, { secret: "x".repeat(40) });
    await traced.app.inject({ method: "GET", url: `/jobs/${job.documentId}`, headers: { authorization: `Bearer ${good}` } });
    await traced.app.inject({ method: "GET", url: `/jobs/${job.documentId}`, headers: { authorization: `Bearer ${forged}` } });
    const delivery = webhookRequest(parseEvent(job.parseJobId), job.secret);
    await traced.app.inject(delivery);
    await traced.app.inject(webhookRequest(parseEvent(job.parseJobId), "not-the-secret"));
    traced.app.log.info({ req: { headers: { authorization: `Bearer ${good}` } }, authorization: `Bearer ${good}` }, "explicit");
    await traced.app.close();
    const all = lines.join("\n");
    expect(lines.length).toBeGreaterThan(4);
    for (const secret of [good, forged, job.secret, delivery.headers["lc-signature"]!, JWT_SECRET]) expect(all).not.toContain(secret);
  });
});

describe("token rules", () => {
  it("the Bearer scheme is case-insensitive (RFC 6750), with one or more spaces", async () => {
    const jwt = await token({ sub: mine.userId });
    for (const authorization of [`bearer ${jwt}`, `BEARER ${jwt}`, `Bearer   ${jwt}`]) {
      const res = await t.app.inject({ method: "GET", url: `/jobs/${mine.documentId}`, headers: { authorization } });
      expect(res.statusCode, authorization.slice(0, 10)).toBe(200);
    }
  });

  it("a user's aud may be a list holding the audience; the service-role key (no aud) is still the operator", async () => {
    const listed = await token({ sub: mine.userId, aud: ["other", "authenticated"] });
    expect((await t.app.inject({ method: "GET", url: `/jobs/${mine.documentId}`, headers: { authorization: `Bearer ${listed}` } })).statusCode).toBe(200);
    const serviceKey = await token({ role: "service_role", aud: undefined, iss: "supabase" });
    expect((await t.app.inject({ method: "GET", url: `/jobs/${mine.documentId}`, headers: { authorization: `Bearer ${serviceKey}` } })).statusCode).toBe(200);
  });

  it("SUPABASE_JWT_AUDIENCE and SUPABASE_JWT_ISSUER are enforced when configured", async () => {
    const strict = await makeApp(db.pool, { configOverrides: { SUPABASE_JWT_AUDIENCE: "app-users", SUPABASE_JWT_ISSUER: "https://ref.supabase.co/auth/v1" } });
    try {
      const get = async (claims: Record<string, unknown>) =>
        (
          await strict.app.inject({
            method: "GET",
            url: `/jobs/${mine.documentId}`,
            headers: { authorization: `Bearer ${await token({ sub: mine.userId, ...claims })}` },
          })
        ).statusCode;
      expect(await get({ aud: "app-users", iss: "https://ref.supabase.co/auth/v1" })).toBe(200);
      expect(await get({ aud: "authenticated", iss: "https://ref.supabase.co/auth/v1" })).toBe(401);
      expect(await get({ aud: "app-users", iss: "https://evil.example/auth/v1" })).toBe(401);
      expect(await get({ aud: "app-users" })).toBe(401);
    } finally {
      await strict.app.close();
    }
  });
});

describe("asymmetric signing keys (SUPABASE_JWKS_URL)", () => {
  let jwksServer: Server;
  let project: CryptoKey;
  let jwksUrl: string;
  beforeAll(async () => {
    const pair = await generateKeyPair("ES256", { extractable: true });
    project = pair.privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: "project-key", alg: "ES256", use: "sig" };
    jwksServer = createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [jwk] })));
    await new Promise<void>((resolve) => jwksServer.listen(0, "127.0.0.1", resolve));
    jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/auth/v1/.well-known/jwks.json`;
  });
  afterAll(() => new Promise<void>((resolve) => jwksServer.close(() => resolve())));

  /** What the authenticator answers for a bearer token: the principal, or the status it refused with. */
  async function principalFor(jwt: string) {
    const auth = createAuthenticator({ jwksUrl });
    return auth.authenticate({ headers: { authorization: `Bearer ${jwt}` } } as FastifyRequest).catch((err: { statusCode?: number }) => err.statusCode);
  }
  const signed = (key: CryptoKey, options: { exp?: boolean; kid?: string } = {}) => {
    const jwt = new SignJWT({ role: "authenticated", aud: "authenticated" })
      .setProtectedHeader({ alg: "ES256", kid: options.kid ?? "project-key" })
      .setSubject(mine.userId)
      .setIssuedAt();
    return (options.exp === false ? jwt : jwt.setExpirationTime("1h")).sign(key);
  };

  it("a user token signed with the project's key is that user", async () => {
    expect(await principalFor(await signed(project))).toEqual({ userId: mine.userId, role: "authenticated", isService: false });
  });

  it("one signed with another key, or without exp, is 401", async () => {
    const stranger = (await generateKeyPair("ES256")).privateKey;
    expect(await principalFor(await signed(stranger))).toBe(401);
    expect(await principalFor(await signed(project, { exp: false }))).toBe(401);
  });
});
