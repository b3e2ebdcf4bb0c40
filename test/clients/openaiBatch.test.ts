/**
 * Reading the Batch API's output and error files (`parseResultLine`): a line is one vector only
 * when it is a 200 answer with exactly one finite embedding; anything else names why it produced
 * none, so the lane re-queues its request instead of storing a wrong vector.
 */
import { describe, expect, it } from "vitest";
import { parseResultLine } from "../../src/clients/openaiBatch.ts";

const answer = (data: unknown[], status = 200) =>
  `{"custom_id":"c1","response":{"status_code":${status},"body":{"data":${JSON.stringify(data)},"usage":{"prompt_tokens":7}}}}`;

describe("parseResultLine", () => {
  it("a 200 answer with one embedding is that vector and its prompt tokens", () => {
    expect(parseResultLine(answer([{ embedding: [0.5, -1] }]))).toEqual({
      customId: "c1",
      embedding: Float32Array.from([0.5, -1]),
      promptTokens: 7,
      failure: undefined,
    });
  });

  it("a 200 answer with more than one embedding for the line's one input is no vector", () => {
    const line = parseResultLine(answer([{ embedding: [1, 0] }, { embedding: [0, 1] }]));
    expect(line).toMatchObject({ customId: "c1", embedding: undefined, promptTokens: 0, failure: "HTTP 200" });
  });

  it("an embedding with a value beyond float32 (1e39 becomes Infinity) is malformed", () => {
    const line = parseResultLine(answer([{ embedding: [0.5, 1e39] }]));
    expect(line).toMatchObject({ customId: "c1", embedding: undefined, promptTokens: 0, failure: "malformed embedding" });
  });

  it("an error line names its code", () => {
    const line = parseResultLine('{"custom_id":"c2","response":null,"error":{"code":"batch_expired","message":"expired"}}');
    expect(line).toMatchObject({ customId: "c2", embedding: undefined, failure: "batch_expired" });
  });
});
