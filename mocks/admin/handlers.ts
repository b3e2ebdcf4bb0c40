/**
 * The admin API under `/__admin` (never faulted):
 *
 * - `GET  /__admin/health` → `{ok: true}`
 * - `GET  /__admin/faults` → the plan in force (defaults filled in)
 * - `POST /__admin/faults` → replace the plan (body: a plan); 400 `{error, issues: [{path, message}]}` when invalid
 * - `GET  /__admin/stats` → counters (`MockStatsSnapshot`)
 * - `GET  /__admin/webhooks` → the webhook delivery log (`DeliveryRecord[]`)
 * - `GET  /__admin/phases` → `{active: [names], faults: {name: n}}`: the phases that are on, and the faults each phase's rules injected
 * - `POST /__admin/phases` → switch a phase on or off (body `{phase, active}`), keeping counters and log; 400 naming the field
 * - `POST /__admin/reset` → forget jobs, objects, rate windows, counters, phases and the log; restart the plan clock
 */
import { http } from "msw";
import { z } from "zod";
import { FaultPlanError, PhaseNameSchema } from "../shared/faults.ts";
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
  phases(): { active: string[]; faults: Record<string, number> };
  setPhase(name: string, active: boolean): void;
  reset(): void;
}

const PhaseSwitchSchema = z.strictObject({ phase: PhaseNameSchema, active: z.boolean({ error: "must be true (switch on) or false (switch off)" }) });

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
    http.get("*/__admin/phases", () => json(admin.phases())),
    http.post("*/__admin/phases", async ({ request }) => {
      const parsed = PhaseSwitchSchema.safeParse(await request.json().catch(() => undefined));
      if (!parsed.success) {
        const issues = parsed.error.issues.map((i) => ({ path: i.path.map(String).join(".") || "(root)", message: i.message }));
        return json({ error: `invalid phase switch: ${issues.map((i) => `${i.path}: ${i.message}`).join("; ")}`, issues }, 400);
      }
      try {
        admin.setPhase(parsed.data.phase, parsed.data.active);
        return json(admin.phases());
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
