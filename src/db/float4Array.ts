/**
 * `real[]` values in PostgreSQL's binary array format (what `array_send` writes and `array_recv`
 * reads: one dimension, no nulls, element type float4, length and lower bound 1, then each value
 * as a 4-byte length and a big-endian float32), so vectors go to and come back from the database
 * as float32 bits, never as text.
 */

/** PostgreSQL's type OID of `real` (float4), named in a binary array's header. */
const FLOAT4_OID = 700;

/**
 * A vector as a binary `real[]` parameter (cast it: `$n::real[]`). node-postgres sends a Buffer
 * parameter in binary, so
 * the stored values are these float32s bit for bit (-0 included, which a text literal has to
 * spell out: `String(-0)` is "0") and no number is ever written as text. The text literal of a
 * 256-vector batch was ~4.5 MB built from 393,216 number strings, and pg escaped it into a
 * second copy before sending it.
 */
export function float4ArrayParam(v: Float32Array): Buffer {
  const buf = Buffer.allocUnsafe(20 + 8 * v.length);
  buf.writeInt32BE(1, 0); // dimensions
  buf.writeInt32BE(0, 4); // no nulls
  buf.writeInt32BE(FLOAT4_OID, 8);
  buf.writeInt32BE(v.length, 12);
  buf.writeInt32BE(1, 16); // lower bound
  for (let i = 0, at = 20; i < v.length; i++, at += 8) {
    buf.writeInt32BE(4, at);
    buf.writeFloatBE(v[i]!, at + 4);
  }
  return buf;
}

/**
 * The float32 values of a `real[]` read back as `array_send(column)` (a bytea, which node-postgres
 * hands over as a Buffer): the finish stage re-hashes stored vectors this way. Read as text, a
 * page of 64 vectors was ~1.2 MB of digits that pg split into 98,304 strings and parsed one by one.
 *
 * @throws Error when `bytes` is not a one-dimensional float4 array without nulls.
 */
export function float4ArrayFromSend(bytes: Uint8Array): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength === 12 && view.getInt32(0) === 0) return new Float32Array(0); // the empty array
  const length = bytes.byteLength >= 20 ? view.getInt32(12) : -1;
  if (view.getInt32(0) !== 1 || view.getInt32(4) !== 0 || view.getInt32(8) !== FLOAT4_OID || bytes.byteLength !== 20 + 8 * length) {
    throw new Error(`not a one-dimensional real[] without nulls in array_send's format (${bytes.byteLength} bytes)`);
  }
  const out = new Float32Array(length);
  for (let i = 0, at = 20; i < length; i++, at += 8) out[i] = view.getFloat32(at + 4);
  return out;
}
