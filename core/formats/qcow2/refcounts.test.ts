/**
 * Refcount entries of every width, read and written byte by byte, against
 * the specification's layout (big-endian; widths under 8 bits packed from
 * each byte's lowest bit) as DataView and BigInt spell it out.
 */
import { describe, expect, it } from 'vitest';
import { prng } from '../../test/prng.js';
import { readRefcount, writeRefcount } from './refcounts.js';

/** Entry `i` as the specification lays it out, as a BigInt. */
function specRead(b: Uint8Array, i: number, bits: number): bigint {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (bits === 64) return dv.getBigUint64(i * 8);
  if (bits === 32) return BigInt(dv.getUint32(i * 4));
  if (bits === 16) return BigInt(dv.getUint16(i * 2));
  const bit = i * bits;
  return BigInt((b[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1));
}

describe('refcount entries', () => {
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    it(`reads and writes ${bits}-bit entries where the specification puts them`, () => {
      const rng = prng(bits);
      const block = rng.bytes(4096);
      const entries = (4096 * 8) / bits;
      const max = bits === 64 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
      for (let n = 0; n < 1000; n++) {
        const i = rng.int(0, entries);
        const spec = specRead(block, i, bits);
        expect(readRefcount(block, i, bits)).toBe(spec > BigInt(max) ? max : Number(spec));
        const v = n % 10 === 0 ? max : Math.floor((rng.int(0, 2 ** 30) / 2 ** 30) * max);
        const before = block.slice();
        writeRefcount(block, i, bits, v);
        expect(specRead(block, i, bits)).toBe(BigInt(v));
        // Only the entry's own bits changed.
        writeRefcount(before, i, bits, 0);
        const after = block.slice();
        writeRefcount(after, i, bits, 0);
        expect(Buffer.compare(after, before)).toBe(0);
      }
    });
  }

  it('reads a 64-bit count past 2^53 - 1 as 2^53 - 1', () => {
    const block = new Uint8Array(16);
    new DataView(block.buffer).setBigUint64(8, 2n ** 53n + 5n);
    expect(readRefcount(block, 1, 64)).toBe(Number.MAX_SAFE_INTEGER);
    new DataView(block.buffer).setBigUint64(8, 2n ** 53n - 1n);
    expect(readRefcount(block, 1, 64)).toBe(Number.MAX_SAFE_INTEGER);
  });
});
