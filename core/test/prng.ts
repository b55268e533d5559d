/** A seeded PRNG for tests (mulberry32): the same sequence on every machine. */
export function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    /** An integer in [lo, hi). */
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo)),
    /** One of `items`. */
    pick: <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)],
    /** `n` random bytes. */
    bytes(n: number): Uint8Array {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i += 4) {
        const v = (next() * 4294967296) >>> 0;
        b[i] = v;
        if (i + 1 < n) b[i + 1] = v >>> 8;
        if (i + 2 < n) b[i + 2] = v >>> 16;
        if (i + 3 < n) b[i + 3] = v >>> 24;
      }
      return b;
    },
  };
}
export type Rng = ReturnType<typeof prng>;
