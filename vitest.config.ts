import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // One embedded PostgreSQL for the whole run; each test file gets its own database cloned
    // from a migrated template (test/support/db.ts), so files run in parallel safely.
    globalSetup: ["test/support/globalSetup.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Vitest's default on a 2-core machine is one worker (cores - 1), which runs the files one by
    // one although most of their time is spent waiting on PostgreSQL and child processes: the
    // whole suite used 425 CPU-seconds in 995 s of wall time at 3 workers on a loaded machine.
    // Two workers keep both cores busy.
    maxWorkers: 2,
  },
});
