/**
 * Coverage counts the table's edges (25 without ∅ → uploaded: 9 forward, 9 failure, 7 retry:
 * a failed parse goes back to `uploaded` only)
 * that the events took, and lists the rest.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collectCoverage, computeCoverage, coveragePercent, meetsCoverage, mergeCoverage, type CoverageEvent } from "../../harness/coverage.ts";
import { EDGES, PIPELINE_STATES } from "../../src/state-machine/table.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { buildFinishedDatabase, dropQuietly } from "./finishedDatabase.ts";

/** The happy path of one job, by the actors that take it. */
const happy: CoverageEvent[] = [
  { from_status: null, to_status: "uploaded", actor: "api" },
  ...PIPELINE_STATES.slice(1).map((to, i) => ({ from_status: PIPELINE_STATES[i]!, to_status: to, actor: to === "parsed" ? "webhook" : "worker" })),
];

describe("computeCoverage", () => {
  it("counts the forward path as 9 of 25 edges and lists the 16 failure and retry edges", () => {
    const report = computeCoverage(happy);
    expect(report.totalEdges).toBe(25);
    // Create edges are not counted: the upload's and a model migration's two.
    expect(report.totalEdges).toBe(EDGES.filter((e) => e.kind !== "create").length);
    expect(EDGES.filter((e) => e.kind === "create")).toHaveLength(3);
    expect(report.exercisedEdges).toBe(9);
    expect(coveragePercent(report)).toBeCloseTo(36, 2);
    expect(report.byKind.forward).toMatchObject({ total: 9, exercised: 9, percent: 100, unexercised: [] });
    expect(report.byKind.failure.unexercised).toHaveLength(9);
    expect(report.byKind.retry.unexercised).toContain("failed_embedding → embeddings_stored");
    expect(report.unexercised).toHaveLength(16);
    expect(report.unexercised).toContain("parse_queued → failed_parse");
  });

  it("records counts per actor, the actor pairs, and events that are not edges", () => {
    const report = computeCoverage([
      ...happy,
      { from_status: "parse_queued", to_status: "parsed", actor: "reconciler", count: 2 },
      { from_status: "embedding_in_progress", to_status: "failed_embedding", actor: "worker" },
      { from_status: "failed_embedding", to_status: "embedding_in_progress", actor: "operator" },
      { from_status: "uploaded", to_status: "complete", actor: "worker" },
    ]);
    const parsed = report.edges.find((e) => e.from === "parse_queued" && e.to === "parsed")!;
    expect(parsed).toMatchObject({ count: 3, byActor: { webhook: 1, reconciler: 2 } });
    expect(report.exercisedEdges).toBe(11);
    expect(report.byKind.failure).toMatchObject({ total: 9, exercised: 1 });
    expect(report.byKind.retry).toMatchObject({ total: 7, exercised: 1 });
    expect(report.illegal).toEqual([{ from: "uploaded", to: "complete", count: 1 }]);
    // 25 edges, parse_queued → parsed has 2 actors and parse_queued → failed_parse has 3.
    expect(report.actorPairs).toEqual({ total: 28, exercised: 12 });
  });

  it("counts the create edge only when asked", () => {
    const report = computeCoverage(happy, { includeCreate: true });
    expect(report).toMatchObject({ includesCreateEdge: true, totalEdges: 28, exercisedEdges: 10 });
    expect(report.byKind.create).toMatchObject({ total: 3, exercised: 1, unexercised: ["∅ → chunks_stored", "∅ → parse_validated"] });
  });

  it("reaches 100% only when every edge is taken, and merges scenarios", () => {
    const all = EDGES.filter((e) => e.kind !== "create").map((e) => ({ from_status: e.from, to_status: e.to, actor: e.actors[0]! }));
    const half = computeCoverage(all.slice(0, 13));
    const rest = computeCoverage(all.slice(13));
    expect(meetsCoverage(half, 100)).toBe(false);
    const merged = mergeCoverage([half, rest]);
    expect(merged.percent).toBe(100);
    expect(merged.unexercised).toEqual([]);
    expect(meetsCoverage(merged, 100)).toBe(true);
    expect(meetsCoverage(computeCoverage(all.slice(1)), 100)).toBe(false);
  });
});

describe("collectCoverage", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
    await buildFinishedDatabase(db.pool);
  });
  afterAll(() => dropQuietly(db));

  it("reads the edges from job_events", async () => {
    const report = await collectCoverage(db.pool);
    // Two complete jobs (9 forward edges) and one parse_queued → failed_parse by the webhook.
    expect(report.exercisedEdges).toBe(10);
    expect(report.edges.find((e) => e.from === "uploaded" && e.to === "parse_queued")!.count).toBe(3);
    expect(report.edges.find((e) => e.to === "failed_parse" && e.from === "parse_queued")!.byActor).toEqual({ webhook: 1 });
    expect(report.illegal).toEqual([]);
  });
});
