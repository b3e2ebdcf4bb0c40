/**
 * The governor's statements (tables in migration 0006): one to reserve before the call, one short
 * transaction to settle after it. The budget row's lock lasts for the statement or that
 * transaction, never across the HTTP call. `$now` is `coalesce($n, now())` so tests drive a
 * simulated clock.
 *
 * The budget is a token bucket per dimension (requests, tokens) with capacity = the per-minute
 * limit (the lesser of the deployment's ceiling and the key's `x-ratelimit-limit-*`), refilled
 * continuously. A reservation always takes its cost, so the level may go negative; it may send
 * once the level would be back at zero (`send_at`). Callers therefore queue first come, first
 * served across every process, and what is sent over any interval [s, e] is at most
 * capacity + rate × (e − s): what the server's own bucket allows.
 */
import type pg from "pg";
import { withTransaction } from "../db/transaction.ts";
import type { Queryable } from "../state-machine/transition.ts";

/** Seconds since the budget's levels were last brought up to date (never negative: clocks of concurrent callers may disagree). */
const ELAPSED = `greatest(0, extract(epoch FROM (coalesce($now::timestamptz, now()) - b.refilled_at)))`;
/** A level refilled up to now, capped at capacity. */
const refilled = (level: string, cap: string) => `least(${cap}, b.${level} + ${ELAPSED} * ${cap} / 60.0)`;

/** Named parameters, so the two long statements stay readable; compiled once to $1, $2, … */
function compile(sql: string, names: readonly string[]): string {
  return sql.replace(/\$([a-z_]+)/g, (whole, name: string) => {
    const i = names.indexOf(name);
    if (i < 0) throw new Error(`governor SQL: unknown parameter ${whole}`);
    return `$${i + 1}`;
  });
}

const RESERVE_PARAMS = ["key", "holder", "requests", "tokens", "rpm", "tpm", "now", "ttl_ms"] as const;
const RPM_CAP = `least($rpm::double precision, coalesce(b.server_rpm, $rpm))`;
const TPM_CAP = `least($tpm::double precision, coalesce(b.server_tpm, $tpm))`;

export const RESERVE_SQL = compile(
  `WITH budget AS (
     INSERT INTO upload_pipeline.rate_budgets AS b (budget_key, requests_level, tokens_level, refilled_at)
     VALUES ($key, $rpm::double precision - $requests, $tpm::double precision - $tokens, coalesce($now::timestamptz, now()))
     ON CONFLICT (budget_key) DO UPDATE SET
       requests_level = ${refilled("requests_level", RPM_CAP)} - $requests,
       tokens_level = ${refilled("tokens_level", TPM_CAP)} - $tokens,
       refilled_at = greatest(b.refilled_at, coalesce($now::timestamptz, now())),
       updated_at = now()
     RETURNING b.requests_level, b.tokens_level, b.refilled_at, b.paused_until, ${RPM_CAP} AS rpm, ${TPM_CAP} AS tpm
   ), timing AS (
     SELECT greatest(
              coalesce($now::timestamptz, now()),
              paused_until,
              refilled_at + make_interval(secs => greatest(0, -requests_level) * 60.0 / rpm),
              refilled_at + make_interval(secs => greatest(0, -tokens_level) * 60.0 / tpm)) AS send_at
       FROM budget
   )
   INSERT INTO upload_pipeline.rate_reservations (budget_key, holder, requests, tokens, send_at, expires_at)
   SELECT $key, $holder, $requests, $tokens, send_at, send_at + make_interval(secs => $ttl_ms::double precision / 1000) FROM timing
   RETURNING reservation_id::text AS reservation_id,
             greatest(0, extract(epoch FROM (send_at - coalesce($now::timestamptz, now()))) * 1000)::double precision AS wait_ms`,
  RESERVE_PARAMS,
);

/**
 * How much of a refund the level may take back. The level counts reservations still waiting for
 * their send time, so the bucket's real content is level + those; the real bucket stops filling at
 * capacity, the level does not. A refund is therefore credited only as far as (a) the real bucket
 * could not have been full since the reservation was sent (the refill since then may have been
 * lost to the cap) and (b) it keeps the real bucket below capacity until the last waiting
 * reservation has sent. The property test in test/property/governor.test.ts found the case
 * without (b): a refund while others waited let a later caller send early.
 */
const credit = (level: string, refund: string, pendingCol: string, cap: string) =>
  `greatest(0, least(
     s.${refund} - CASE WHEN s.send_at <= coalesce($now::timestamptz, now())
                        THEN greatest(0, extract(epoch FROM (coalesce($now::timestamptz, now()) - s.send_at))) * ${cap} / 60.0 ELSE 0 END,
     ${cap} - ${refilled(level, cap)} - pending.${pendingCol} - pending.span_s * ${cap} / 60.0))`;

/**
 * The most the level may hold after a 429 pause of `$pause_ms` starts: capacity less what waits to
 * send, less the pause's refill. The level is the real bucket less the reservations still waiting,
 * and those wait out the pause while the real bucket may fill up to capacity and lose the rest of
 * its refill; the level, and every send time promised from it afterwards, would count refill the
 * bucket never got (the property test in test/property/governor.test.ts found a send 1.1 tokens of
 * 6,000 over the budget). After a 429 from an emptied bucket this takes nothing: the pause's
 * refill fits.
 */
const pauseLoss = (pendingCol: string, cap: string) =>
  `CASE WHEN $pause_ms::double precision > 0
        THEN ${cap} - pending.${pendingCol} - $pause_ms::double precision / 1000 * ${cap} / 60.0
        ELSE 'Infinity' END`;

const SETTLE_PARAMS = [
  "id",
  "tokens",
  "refund_requests",
  "remaining_requests",
  "remaining_tokens",
  "limit_requests",
  "limit_tokens",
  "pause_ms",
  "rpm",
  "tpm",
  "now",
] as const;
const RPM_CAP_SEEN = `least($rpm::double precision, coalesce($limit_requests, b.server_rpm, $rpm))`;
const TPM_CAP_SEEN = `least($tpm::double precision, coalesce($limit_tokens, b.server_tpm, $tpm))`;

/**
 * Settle a reservation once: give back what the answer's usage says was over-reserved (or all of
 * it when the request never left), follow the answer's `x-ratelimit-*` headers and a 429's
 * `retry-after`, and drop this budget's expired reservations. A second settle of the same
 * reservation changes nothing (the `settled` CTE finds no unsettled row).
 *
 * Headers: `remaining` is what the server had left after counting this request, but not the
 * requests granted after it (by any process), which the level already counts; so the level
 * becomes at most `remaining − (granted since)`. The server's word only ever lowers the level.
 */
export const SETTLE_SQL = compile(
  `WITH settled AS (
     UPDATE upload_pipeline.rate_reservations r
        SET settled_tokens = coalesce($tokens, r.tokens), settled_at = coalesce($now::timestamptz, now())
      WHERE r.reservation_id = $id::bigint AND r.settled_at IS NULL
      RETURNING r.budget_key, r.send_at,
                r.tokens - coalesce($tokens, r.tokens) AS token_refund,
                CASE WHEN $refund_requests::boolean THEN r.requests ELSE 0 END AS request_refund
   ), pending AS (
     SELECT coalesce(sum(o.requests), 0) AS requests, coalesce(sum(o.tokens), 0) AS tokens,
            coalesce(greatest(0, extract(epoch FROM (max(o.send_at) - coalesce($now::timestamptz, now())))), 0) AS span_s
       FROM upload_pipeline.rate_reservations o JOIN settled s USING (budget_key)
      WHERE o.send_at > coalesce($now::timestamptz, now()) AND o.settled_at IS NULL AND o.reservation_id <> $id::bigint
   ), since AS (
     SELECT coalesce(sum(o.requests), 0) AS requests, coalesce(sum(coalesce(o.settled_tokens, o.tokens)), 0) AS tokens
       FROM upload_pipeline.rate_reservations o JOIN settled s USING (budget_key)
      WHERE o.reservation_id > $id::bigint
   ), budget AS (
     UPDATE upload_pipeline.rate_budgets b SET
       requests_level = least(${refilled("requests_level", RPM_CAP_SEEN)} + ${credit("requests_level", "request_refund", "requests", RPM_CAP_SEEN)},
                              coalesce($remaining_requests::double precision - since.requests, 'Infinity'),
                              ${pauseLoss("requests", RPM_CAP_SEEN)}),
       tokens_level = least(${refilled("tokens_level", TPM_CAP_SEEN)} + ${credit("tokens_level", "token_refund", "tokens", TPM_CAP_SEEN)},
                            coalesce($remaining_tokens::double precision - since.tokens, 'Infinity'),
                            ${pauseLoss("tokens", TPM_CAP_SEEN)}),
       refilled_at = greatest(b.refilled_at, coalesce($now::timestamptz, now())),
       server_rpm = coalesce($limit_requests, b.server_rpm),
       server_tpm = coalesce($limit_tokens, b.server_tpm),
       paused_until = greatest(b.paused_until, coalesce($now::timestamptz, now()) + make_interval(secs => coalesce($pause_ms::double precision, 0) / 1000)),
       updated_at = now()
       FROM settled s, since, pending
      WHERE b.budget_key = s.budget_key
      RETURNING b.budget_key
   ), expired AS (
     DELETE FROM upload_pipeline.rate_reservations o USING settled s
      WHERE o.budget_key = s.budget_key AND o.expires_at < coalesce($now::timestamptz, now()) AND o.reservation_id <> $id::bigint
      RETURNING 1
   )
   SELECT (SELECT count(*) FROM budget)::int AS settled, (SELECT count(*) FROM expired)::int AS expired`,
  SETTLE_PARAMS,
);

export interface ReserveArgs {
  budgetKey: string;
  holder: string;
  requests: number;
  tokens: number;
  ceiling: { rpm: number; tpm: number };
  /** How long an unsettled reservation counts as in flight (a crashed holder's stops counting then). */
  ttlMs: number;
  now?: Date | undefined;
}

/** Take `requests` and `tokens` from the shared budget; returns when the caller may send. */
export async function reserve(db: Queryable, a: ReserveArgs): Promise<{ reservationId: string; waitMs: number }> {
  const { rows } = await db.query<{ reservation_id: string; wait_ms: number }>(RESERVE_SQL, [
    a.budgetKey,
    a.holder,
    a.requests,
    a.tokens,
    a.ceiling.rpm,
    a.ceiling.tpm,
    a.now ?? null,
    a.ttlMs,
  ]);
  return { reservationId: rows[0]!.reservation_id, waitMs: Number(rows[0]!.wait_ms) };
}

export interface SettleArgs {
  reservationId: string;
  /** Tokens the answer's usage reports; undefined → the reservation stands as taken. */
  tokens?: number | undefined;
  /** The request never left (open circuit, aborted while waiting): give its request back too. */
  notSent?: boolean | undefined;
  remainingRequests?: number | undefined;
  remainingTokens?: number | undefined;
  limitRequests?: number | undefined;
  limitTokens?: number | undefined;
  /** A 429's retry-after: every process waits this long from now. */
  pauseMs?: number | undefined;
  ceiling: { rpm: number; tpm: number };
  now?: Date | undefined;
}

/**
 * Locks the budget row before SETTLE_SQL reads the reservations: in READ COMMITTED a statement
 * reads the reservations as of its start but updates the newest budget row, so without the lock a
 * reservation committed meanwhile would be missing from `since` and `pending` (the property test
 * found exactly that). Reservations are inserted under the same row lock, so after it every
 * reservation the row counts is visible to the next statement.
 */
const LOCK_BUDGET_SQL = `SELECT 1 FROM upload_pipeline.rate_budgets b JOIN upload_pipeline.rate_reservations r USING (budget_key)
  WHERE r.reservation_id = $1::bigint FOR UPDATE OF b`;

/**
 * Settle once (idempotent): returns whether this call settled it, and how many expired rows it
 * dropped. One transaction of two statements (lock, settle) after the call; the lock is held for
 * that transaction only.
 */
export async function settle(pool: pg.Pool, a: SettleArgs): Promise<{ settled: boolean; expired: number }> {
  const { rows } = await withTransaction(pool, async (db) => {
    await db.query(LOCK_BUDGET_SQL, [a.reservationId]);
    return db.query<{ settled: number; expired: number }>(SETTLE_SQL, [
      a.reservationId,
      a.notSent ? 0 : (a.tokens ?? null),
      a.notSent ?? false,
      a.remainingRequests ?? null,
      a.remainingTokens ?? null,
      a.limitRequests ?? null,
      a.limitTokens ?? null,
      a.pauseMs ?? null,
      a.ceiling.rpm,
      a.ceiling.tpm,
      a.now ?? null,
    ]);
  });
  return { settled: rows[0]!.settled === 1, expired: rows[0]!.expired };
}
