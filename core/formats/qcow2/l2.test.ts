import { describe, expect, it } from 'vitest';
import { decodeL1, decodeL2, decodePlainL2, encodeL2, plainL1Offset, setPlainL2, type Mapping } from './l2.js';
import { halvesOf, HI, LO } from './tables.js';

/** A seeded generator (mulberry32), so a failure names a reproducible case. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/**
 * Entries near the edges the quick decoders draw: each flag and reserved
 * bit, offsets past 2^53, unaligned and zero offsets, mostly one at a time.
 */
function entries(count: number, clusterBits: number, rand: () => number): bigint[] {
  const bit = (n: number) => 1n << BigInt(n);
  const out: bigint[] = [0n];
  for (let i = 0; i < count; i++) {
    const cluster = BigInt(Math.floor(rand() * 2 ** 20));
    let e = cluster << BigInt(clusterBits);
    if (rand() < 0.5) e |= bit(63);
    const r = rand();
    if (r < 0.05) e |= bit(62);
    else if (r < 0.1) e |= bit(56 + Math.floor(rand() * 6));
    else if (r < 0.15) e |= bit(53 + Math.floor(rand() * 3));
    else if (r < 0.2) e |= bit(Math.floor(rand() * 9));
    else if (r < 0.25) e |= bit(9 + Math.floor(rand() * (clusterBits - 9 || 1)));
    else if (r < 0.3) e &= bit(63);
    out.push(e & (bit(64) - 1n));
  }
  return out;
}

const never = () => 'entry';

/** decodeL2's answer, or its error's message. */
function slowL2(e: bigint, clusterBits: number): Mapping | string {
  try {
    return decodeL2(e, clusterBits, 3, never);
  } catch (err) {
    return (err as Error).message;
  }
}

describe('quick L1/L2 decoding (32-bit halves, no BigInt)', () => {
  for (const clusterBits of [9, 12, 16, 21]) {
    const cs = 2 ** clusterBits;
    it(`agrees with decodeL1 and decodeL2 wherever it answers (${cs}-byte clusters)`, () => {
      const table = BigUint64Array.from(entries(20000, clusterBits, random(clusterBits)));
      const words = halvesOf(table);
      let answered = 0;
      table.forEach((e, i) => {
        const [hi, lo] = [words[2 * i + HI], words[2 * i + LO]];
        expect((BigInt(hi) << 32n) | BigInt(lo)).toBe(e);
        const quick = decodePlainL2(hi, lo, cs);
        if (quick) {
          answered++;
          expect(quick).toEqual(slowL2(e, clusterBits));
        }
        const offset = plainL1Offset(hi, lo, cs);
        if (offset !== undefined) expect(offset).toBe(decodeL1(e, cs, i).offset);
      });
      // Most entries are plain: the comparison above must have run.
      expect(answered).toBeGreaterThan(10000);
    });
  }

  it('sets plain data entries as encodeL2 encodes them', () => {
    const rng = random(16);
    const table = new BigUint64Array(4096);
    const words = halvesOf(table);
    const hosts = Array.from({ length: table.length }, (_, j) => (j < 2 ? [65536, 2 ** 52 - 65536][j] : Math.floor(rng() * 2 ** 36) * 65536));
    hosts.forEach((host, j) => setPlainL2(words, j, host));
    hosts.forEach((host, j) => expect(table[j]).toBe(encodeL2({ kind: 'data', host, copied: true }, 16)));
  });

  it('answers for plain entries and leaves every other kind to the full decoders', () => {
    const cs = 65536;
    const quick = (e: bigint) => {
      const words = halvesOf(BigUint64Array.of(e));
      return decodePlainL2(words[HI], words[LO], cs);
    };
    expect(quick(0n)).toEqual({ kind: 'unallocated' });
    expect(quick(0x50000n)).toEqual({ kind: 'data', host: 0x50000, copied: false });
    expect(quick((1n << 63n) | (2n ** 52n))).toEqual({ kind: 'data', host: 2 ** 52, copied: true });
    expect(quick((1n << 63n) | 0x50001n)).toBeUndefined(); // zero flag
    expect(quick((1n << 62n) | 0x50000n)).toBeUndefined(); // compressed
    expect(quick((1n << 57n) | 0x50000n)).toBeUndefined(); // reserved
    expect(quick(2n ** 53n)).toBeUndefined(); // past MAX_HOST_OFFSET
    expect(quick(0x50200n)).toBeUndefined(); // unaligned
    expect(quick(1n << 63n)).toBeUndefined(); // copied without an offset
  });
});
