/**
 * `--env-file`: the settings a team deploys reach every worker process and the API. Each setting
 * here has an effect the run leaves in the database or the mocks' counters, and each differs
 * from the default (text-embedding-3-small at its full 1536 dimensions, 256 inputs per call,
 * MAX_ATTEMPTS 5), so a setting that did not arrive fails the test. (A bad value refused before
 * anything starts: test/harness/cli.test.ts.)
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, inject, it } from "vitest";
import { loadEnvFile, withEnvFile } from "../../harness/envFile.ts";
import { checkRun, runScenario } from "../../harness/runner.ts";
import { parseScenario } from "../../harness/scenario.ts";

describe("--env-file", () => {
  it("the deployed model, dimensions, batch size and attempts are the ones the workers and the API used", async () => {
    const dir = mkdtempSync(join(tmpdir(), "env-file-"));
    const file = join(dir, "team.env");
    writeFileSync(file, "# what we deploy\nEMBED_MODEL=text-embedding-3-large\nEMBED_DIMENSIONS=256\nexport EMBED_BATCH_SIZE=2\nMAX_ATTEMPTS='7'\n");
    const scenario = withEnvFile(
      parseScenario({
        name: "env-file-run",
        description: "a team's settings",
        seed: 5,
        corpus: { documents: 3, minKiB: 4, maxKiB: 8 },
        workers: { processes: 2, slots: 1 },
      }),
      await loadEnvFile(file),
    );
    const run = await runScenario(scenario, { serverUrl: inject("pgServerUrl"), logDir: mkdtempSync(join(tmpdir(), "env-file-logs-")) });
    try {
      expect(run.timedOut, run.stuck.join("\n")).toBe(false);
      // The API stamps MAX_ATTEMPTS on every job it creates.
      const { rows: jobs } = await run.pool.query<{ status: string; max_attempts: number }>("SELECT status, max_attempts FROM upload_pipeline.upload_jobs");
      expect(jobs).toEqual(Array.from({ length: 3 }, () => ({ status: "complete", max_attempts: 7 })));
      // The workers embedded with the model and dimensions of the file, two inputs per call.
      const { rows: vectors } = await run.pool.query<{ embed_model: string; dims: number; batch_id: string }>(
        "SELECT embed_model, array_length(embedding, 1) AS dims, batch_id FROM upload_pipeline.document_vector_buffer",
      );
      expect(new Set(vectors.map((v) => `${v.embed_model}/${v.dims}`))).toEqual(new Set(["text-embedding-3-large/256"]));
      const perBatch = new Map<string, number>();
      for (const v of vectors) perBatch.set(v.batch_id, (perBatch.get(v.batch_id) ?? 0) + 1);
      expect(Math.max(...perBatch.values())).toBe(2);
      // The mock saw exactly those calls: one per stored batch, billed to the large model only.
      const usage = run.mockStats.openai.usage;
      expect(Object.keys(usage)).toEqual(["text-embedding-3-large"]);
      expect(usage["text-embedding-3-large"]).toMatchObject({ requests: perBatch.size, inputs: vectors.length });
      expect((await checkRun(run, scenario)).ok).toBe(true);
    } finally {
      await run.dropDatabase();
    }
  }, 180_000);
});
