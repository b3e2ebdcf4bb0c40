/**
 * The scenario file's `actions` (operator commands at quiet points) and a crash in a model
 * migration's job: validated with the field named; the crash targets the migration job's id.
 */
import { describe, expect, it } from "vitest";
import { buildCorpus } from "../../harness/corpus.ts";
import { crashTargets } from "../../harness/runner.ts";
import { loadScenarioFile, parseScenario, type ScenarioFileError } from "../../harness/scenario.ts";
import { documentId, sha256 } from "../../src/ids.ts";
import { profileJobId } from "../../src/profiles/jobs.ts";

function problems(extra: object): string[] {
  try {
    parseScenario({ name: "m", description: "x", ...extra });
  } catch (err) {
    return (err as ScenarioFileError).message.split("\n").slice(1);
  }
  return [];
}

describe("scenario actions", () => {
  it("name a bad action and a profile crash without its document", () => {
    expect(problems({ actions: [{ migrateModel: ["migrate", "--to", "x"] }] })).toEqual([
      "  - actions.0.migrateModel: must start with a migrate-model command: plan, start, status, cutover or abort",
    ]);
    expect(problems({ actions: [{ dlq: ["list"] }] })).toEqual(expect.arrayContaining(['  - actions.0: Unrecognized key: "dlq"']));
    expect(problems({ crashes: [{ when: { status: "chunking" }, profile: "small-512" }] })).toEqual(["  - crashes.0.profile: only goes with document and at"]);
  });

  it("a crash with `profile` targets the document's migration job for that profile", async () => {
    const scenario = await loadScenarioFile(new URL("../../scenarios/production/model-migration.json", import.meta.url).pathname);
    const corpus = buildCorpus(scenario);
    const targets = crashTargets(scenario, corpus);
    const first = corpus[0]!;
    expect(targets[0]).toMatchObject({
      point: "commit.embedding_queued.after",
      jobId: profileJobId(documentId(first.userId, sha256(first.bytes)), "small-512"),
      label: "doc-0.md's small-512 migration job",
    });
    expect(scenario.actions.map((a) => a.migrateModel[0])).toEqual(["plan", "start", "status", "cutover"]);
  });
});
