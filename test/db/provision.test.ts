import { describe, expect, it } from "vitest";
import { provisionDatabase } from "../../src/db/provision.ts";

describe("database provisioning", () => {
  it("uses DATABASE_URL as given and starts nothing", async () => {
    const db = await provisionDatabase({ databaseUrl: "postgres://u:p@db.example:5432/app" });
    expect(db).toMatchObject({ kind: "external", url: "postgres://u:p@db.example:5432/app" });
    await db.stop();
  });

  it("TEST_DB=container without a Docker engine fails with a message that says what to do", async () => {
    const previous = process.env.DOCKER_HOST;
    // Point testcontainers at a socket that cannot exist, so the result does not depend on the machine.
    process.env.DOCKER_HOST = "unix:///nonexistent/upload-pipeline-docker.sock";
    try {
      await expect(provisionDatabase({ testDb: "container" })).rejects.toThrow(/TEST_DB=container needs a reachable Docker engine.*Unset TEST_DB/s);
    } finally {
      if (previous === undefined) delete process.env.DOCKER_HOST;
      else process.env.DOCKER_HOST = previous;
    }
  }, 60_000);
});
