/**
 * One mock server per test file (msw's `setupServer` habit: one place owns the lifecycle). It
 * starts before the file's tests and closes after them; every test starts from an empty state
 * and the file's fault plan (none unless given).
 */
import OpenAI from "openai";
import { afterAll, beforeAll, beforeEach } from "vitest";
import { startMockServer, type MockServer, type MockServerOptions } from "../../mocks/server.ts";

export function useMockServer(options: Omit<MockServerOptions, "port"> & { faults?: unknown }, started: (server: MockServer) => void): void {
  const { faults = {}, ...serverOptions } = options;
  let server: MockServer | undefined;
  beforeAll(async () => {
    server = await startMockServer({ port: 0, ...serverOptions });
    started(server);
  });
  afterAll(() => server?.close());
  beforeEach(() => {
    server!.mocks.setFaults(faults);
    server!.mocks.reset();
  });
}

/** The official OpenAI SDK pointed at the mock, with the SDK's own retries off so each test sees every answer. */
export function openaiSdk(server: MockServer): OpenAI {
  return new OpenAI({ baseURL: server.urls.openai, apiKey: server.env.OPENAI_API_KEY, maxRetries: 0 });
}
