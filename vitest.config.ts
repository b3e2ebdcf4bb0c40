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
  },
});
