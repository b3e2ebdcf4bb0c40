/**
 * Starts one real PostgreSQL for the test run (embedded unless DATABASE_URL / TEST_DB say
 * otherwise), migrates a template database once, and hands its URL to the test files, which
 * clone it per file (`test/support/db.ts`).
 */
import pg from "pg";
import type { TestProject } from "vitest/node";
import { provisionDatabase, withDatabase } from "../../src/db/provision.ts";
import { migrate } from "../../src/db/migrate.ts";

export const TEMPLATE_DB = "upload_pipeline_template";

declare module "vitest" {
  export interface ProvidedContext {
    pgServerUrl: string;
    pgTemplateDb: string;
  }
}

export default async function setup(project: TestProject) {
  const db = await provisionDatabase({ databaseUrl: process.env.DATABASE_URL, testDb: process.env.TEST_DB });
  const admin = new pg.Client(db.url);
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${TEMPLATE_DB}`);
  await admin.query(`CREATE DATABASE ${TEMPLATE_DB}`);
  await admin.end();
  await migrate(withDatabase(db.url, TEMPLATE_DB), { log: () => {} });
  project.provide("pgServerUrl", db.url);
  project.provide("pgTemplateDb", TEMPLATE_DB);
  return async () => {
    await db.stop();
  };
}
