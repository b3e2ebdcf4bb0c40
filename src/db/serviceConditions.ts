/**
 * `upload_pipeline.service_conditions` (migration 0003): which service refuses the account, as
 * the workers' breakers last reported it. Workers write a row per change; the API's `/healthz`
 * reads them.
 */
import type { Queryable } from "../state-machine/transition.ts";

export interface ServiceConditionRow {
  service: string;
  refusing: boolean;
  code: string | null;
  reason: string | null;
  since: Date | null;
  reported_by: string;
  updated_at: Date;
}

/** Record that `service` refuses us (`refusal` given) or accepts us again (`undefined`). */
export async function recordServiceCondition(
  db: Queryable,
  args: { service: string; refusal: { code: string; message: string; since: Date } | undefined; workerId: string },
): Promise<void> {
  const r = args.refusal;
  await db.query(
    `INSERT INTO upload_pipeline.service_conditions (service, refusing, code, reason, since, reported_by, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, now())
     ON CONFLICT (service) DO UPDATE SET refusing = EXCLUDED.refusing, code = EXCLUDED.code, reason = EXCLUDED.reason,
       since = EXCLUDED.since, reported_by = EXCLUDED.reported_by, updated_at = EXCLUDED.updated_at`,
    [args.service, r !== undefined, r?.code ?? null, r?.message ?? null, r?.since ?? null, args.workerId],
  );
}

/** Every service currently reported as refusing the account. */
export async function refusingServices(db: Queryable): Promise<ServiceConditionRow[]> {
  const { rows } = await db.query<ServiceConditionRow>("SELECT * FROM upload_pipeline.service_conditions WHERE refusing ORDER BY service");
  return rows;
}
