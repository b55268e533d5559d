import { describe, expect, it } from 'vitest';
import { isZero } from '../io/zero.js';
import { zeroRuns } from './zero-runs.js';

describe('isZero', () => {
  it('looks at the given range only', () => {
    const b = new Uint8Array(100);
    b[10] = 1;
    expect(isZero(b)).toBe(false);
    expect(isZero(b, 0, 10)).toBe(true);
    expect(isZero(b, 11)).toBe(true);
    expect(isZero(b, 10, 11)).toBe(false);
    expect(isZero(b, 50, 50)).toBe(true);
  });

  it('finds a byte past the probed head (the native compare)', () => {
    const b = new Uint8Array(8192);
    b[8191] = 7;
    expect(isZero(b, 4096, 8192)).toBe(false);
    expect(isZero(b, 4096, 8191)).toBe(true);
  });

  it('works on a view that does not start its buffer', () => {
    const backing = new Uint8Array(200);
    backing[5] = 1;
    expect(isZero(backing.subarray(6, 100))).toBe(true);
    expect(isZero(backing.subarray(4, 100), 0, 1)).toBe(true);
    expect(isZero(backing.subarray(4, 100), 1, 2)).toBe(false);
  });
});

describe('zeroRuns', () => {
  const block = 4096;

  it('cuts at block boundaries of the guest offset, merging alike blocks', () => {
    // The buffer starts 1 KiB into a block: its first run ends 3 KiB in.
    const buf = new Uint8Array(3 * 1024 + 3 * block);
    buf[100] = 1; // first (partial) block: data
    buf[3 * 1024 + 2 * block + 4000] = 1; // last block: data, past the probed head
    expect(zeroRuns(buf, 1024, block)).toEqual([
      { start: 0, length: 3 * 1024, zero: false },
      { start: 3 * 1024, length: 2 * block, zero: true },
      { start: 3 * 1024 + 2 * block, length: block, zero: false },
    ]);
  });

  it('treats a zero head with data behind it as data, and a short tail on its own', () => {
    const buf = new Uint8Array(2 * block + 512);
    buf[block + 2000] = 9;
    expect(zeroRuns(buf, 0, block)).toEqual([
      { start: 0, length: block, zero: true },
      { start: block, length: block, zero: false },
      { start: 2 * block, length: 512, zero: true },
    ]);
  });
});
