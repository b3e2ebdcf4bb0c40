/**
 * SPEC §8.5: each job's `job_events`, in id order (causal order), is a path through the state
 * machine table taken by allowed actors and ending in the job's status; and no two workers ever
 * held one job at once.
 *
 * Lease tokens are minted fresh by every claim (`gen_random_uuid()`), so within one job a token
 * that reappears after another token wrote means the first holder kept writing after it was
 * taken over: an overlap, even when both tokens belong to the same worker process. A takeover
 * (A … A, B … B) is fine; A, B, A is not.
 */
import { findEdge, isJobStatus, isTerminal, type JobStatus } from "../../../src/state-machine/table.ts";
import { Violations } from "../collector.ts";
import type { EventRow, JobRow } from "../queries.ts";

const LEASED_ACTORS = new Set(["worker", "reconciler"]);

function byJob(events: readonly EventRow[]): Map<string, EventRow[]> {
  const map = new Map<string, EventRow[]>();
  for (const e of events) {
    const list = map.get(e.job_id);
    if (list) list.push(e);
    else map.set(e.job_id, [e]);
  }
  for (const list of map.values()) list.sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
  return map;
}

const describe = (e: EventRow) =>
  `event #${e.id} (${e.from_status ?? "∅"} → ${e.to_status} by ${e.actor ?? "?"}${e.worker_id && e.worker_id !== e.actor ? ` ${e.worker_id}` : ""})`;

export function checkEventPaths(jobs: readonly JobRow[], events: readonly EventRow[]): Violations {
  const v = new Violations("event_paths_valid", "§8.5");
  const grouped = byJob(events);
  for (const job of jobs) {
    const list = grouped.get(job.job_id) ?? [];
    const where = `job ${job.job_id}`;
    if (list.length === 0) {
      v.add(`${where} has no job_events at all`);
      continue;
    }
    let previous: EventRow | undefined;
    for (const e of list) {
      if (!previous) {
        // ∅ → uploaded for an upload's job; a model migration's job starts at its own create edge.
        const created = e.from_status === null && isJobStatus(e.to_status) && findEdge(null, e.to_status)?.kind === "create";
        if (!created) v.add(`${where}: first ${describe(e)} is not a create edge (∅ → uploaded, or a migration job's ∅ → chunks_stored | parse_validated)`);
      } else if (e.from_status !== previous.to_status) {
        v.add(`${where}: ${describe(e)} starts from ${e.from_status ?? "∅"} but the previous event #${previous.id} ended in ${previous.to_status}`);
      }
      previous = e;
      const from = e.from_status;
      if ((from !== null && !isJobStatus(from)) || !isJobStatus(e.to_status)) {
        v.add(`${where}: ${describe(e)} names a state that does not exist`);
        continue;
      }
      const edge = findEdge(from as JobStatus | null, e.to_status);
      if (!edge) {
        v.add(`${where}: illegal transition in ${describe(e)}: not an edge of the state machine`);
        continue;
      }
      if (e.actor === null) v.add(`${where}: ${describe(e)} records no actor (detail.actor)`);
      else if (!(edge.actors as readonly string[]).includes(e.actor)) {
        v.add(`${where}: ${describe(e)}: actor ${e.actor} may not take this edge (allowed: ${edge.actors.join(", ")})`);
      } else if (LEASED_ACTORS.has(e.actor) && e.lease_token === null && edge.kind !== "create") {
        // (A job's creation holds no lease of its own: a worker creates a migration job inside
        // the fenced transaction of the upload it finishes.)
        v.add(`${where}: ${describe(e)} was written by a leased actor without a lease token (unfenced write)`);
      }
    }
    if (previous && previous.to_status !== job.status) {
      v.add(`${where} is in ${job.status} but its last event #${previous.id} ended in ${previous.to_status}`);
    }
  }
  return v;
}

export function checkNoOverlappingLeases(jobs: readonly JobRow[], events: readonly EventRow[]): Violations {
  const v = new Violations("no_overlapping_leases", "§8.5");
  for (const [jobId, list] of byJob(events)) {
    const workerOf = new Map<string, string | null>();
    const retired = new Map<string, EventRow>(); // token → its last event before it was superseded
    let current: { token: string; last: EventRow } | undefined;
    for (const e of list) {
      if (e.lease_token === null) continue;
      const owner = workerOf.get(e.lease_token);
      if (owner === undefined) workerOf.set(e.lease_token, e.worker_id);
      else if (owner !== e.worker_id) {
        v.add(`job ${jobId}: lease token ${e.lease_token} used by two workers (${owner} and ${e.worker_id}, ${describe(e)})`);
      }
      if (current?.token === e.lease_token) {
        current.last = e;
        continue;
      }
      const earlier = retired.get(e.lease_token);
      if (earlier && current) {
        v.add(
          `job ${jobId}: overlapping leases: ${describe(e)} holds token ${e.lease_token} (${e.worker_id}) again after ` +
            `event #${current.last.id} by token ${current.token} (${current.last.worker_id}) took over from its event #${earlier.id}`,
        );
      }
      if (current) retired.set(current.token, current.last);
      current = { token: e.lease_token, last: e };
    }
  }
  for (const job of jobs) {
    if (isJobStatus(job.status) && isTerminal(job.status) && job.lease_token !== null) {
      v.add(`job ${job.job_id} is ${job.status} but still holds a ${job.lease_live ? "live" : "expired"} lease ${job.lease_token} (${job.locked_by})`);
    }
  }
  return v;
}
