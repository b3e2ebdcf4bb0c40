/** The binary `real[]` format the embed stage writes and the finish stage reads (src/db/float4Array.ts). */
import { describe, expect, it } from "vitest";
import { float4ArrayFromSend, float4ArrayParam } from "../../src/db/float4Array.ts";

describe("float4Array", () => {
  it("reads back what it writes, bit for bit (-0 included)", () => {
    const v = new Float32Array([-0, 0, 1.5, -3.4028234663852886e38, 1e-45]);
    const back = float4ArrayFromSend(float4ArrayParam(v));
    expect(Buffer.from(back.buffer)).toEqual(Buffer.from(v.buffer));
    expect(Object.is(back[0], -0)).toBe(true);
  });

  it("refuses bytes that are not a one-dimensional float4 array", () => {
    const int4 = float4ArrayParam(new Float32Array([1, 2]));
    int4.writeInt32BE(23, 8); // element type int4
    expect(() => float4ArrayFromSend(int4)).toThrow(/not a one-dimensional real\[\]/);
    expect(() => float4ArrayFromSend(float4ArrayParam(new Float32Array([1, 2])).subarray(0, 30))).toThrow(/not a one-dimensional real\[\]/);
  });
});
