/**
 * The admin API under `/__admin` (never faulted):
 *
 * - `GET  /__admin/health` → `{ok: true}`
 * - `GET  /__admin/faults` → the plan in force (defaults filled in)
 * - `POST /__admin/faults` → replace the plan (body: a plan); 400 `{error, issues: [{path, message}]}` when invalid
 * - `GET  /__admin/stats` → counters (`MockStatsSnapshot`)
 * - `GET  /__admin/webhooks` → the webhook delivery log (`DeliveryRecord[]`)
 * - `POST /__admin/reset` → forget jobs, objects, rate windows, counters and the log; restart the plan clock
 */
import { http } from "msw";
import { FaultPlanError } from "../shared/faults.ts";
import { json } from "../shared/http.ts";
import type { MockStatsSnapshot } from "../shared/stats.ts";
import type { FaultPlan } from "../shared/faults.ts";
import type { DeliveryRecord } from "../llamaparse/webhook.ts";

/** What the admin API needs from the mocks. */
export interface AdminControls {
  getFaults(): FaultPlan;
  setFaults(plan: unknown): FaultPlan;
  stats(): MockStatsSnapshot;
  webhookLog(): readonly DeliveryRecord[];
  reset(): void;
}

/**
 * Builds the `/__admin` handlers (unfaulted, unauthenticated: the mocks only listen on loopback
 * by default).
 * @example await fetch(`${baseUrl}/__admin/faults`, { method: "POST", body: JSON.stringify({ openai: { errors: [{ fault: 503, rate: 0.1 }] } }) });
 */
export function createAdminHandlers(admin: AdminControls) {
  return [
    http.get("*/__admin/health", () => json({ ok: true })),
    http.get("*/__admin/faults", () => json(admin.getFaults())),
    http.post("*/__admin/faults", async ({ request }) => {
      let body: unknown;
      try {
        const text = await request.text();
        body = text.trim() === "" ? {} : JSON.parse(text);
      } catch {
        return json({ error: "invalid fault plan: the body is not valid JSON", issues: [{ path: "(root)", message: "invalid JSON" }] }, 400);
      }
      try {
        return json(admin.setFaults(body));
      } catch (error) {
        if (error instanceof FaultPlanError) return json({ error: error.message, issues: error.issues }, 400);
        throw error;
      }
    }),
    http.get("*/__admin/stats", () => json(admin.stats())),
    http.get("*/__admin/webhooks", () => json(admin.webhookLog())),
    http.post("*/__admin/reset", () => {
      admin.reset();
      return json({ ok: true });
    }),
  ];
}
