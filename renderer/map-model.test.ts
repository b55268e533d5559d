import { describe, expect, it } from 'vitest';
import type { MapExtent } from '../electron/ipc/contract.js';
import { aggregateColumns, extentAt, extentKind, KINDS, NO_KIND } from './map-model.js';

const TiB = 2 ** 40;

function extent(start: number, length: number, kind: 'data' | 'zero' | 'hole' | 'compressed' | 'backing'): MapExtent {
  return {
    start,
    length,
    depth: kind === 'backing' ? 1 : 0,
    present: kind !== 'hole',
    zero: kind === 'zero' || kind === 'hole',
    data: kind === 'data' || kind === 'compressed' || kind === 'backing',
    compressed: kind === 'compressed',
    ...(kind === 'data' ? { offset: start } : {}),
  };
}

const idx = (k: (typeof KINDS)[number]) => KINDS.indexOf(k);

describe('extentKind', () => {
  it('tells data, compressed, backing, zero and unallocated apart', () => {
    expect(extentKind(extent(0, 1, 'data'))).toBe('data');
    expect(extentKind(extent(0, 1, 'compressed'))).toBe('compressed');
    expect(extentKind(extent(0, 1, 'backing'))).toBe('backing');
    // Each backing depth its own colour; the third and deeper share one.
    expect(extentKind({ ...extent(0, 1, 'backing'), depth: 2 })).toBe('backing2');
    expect(extentKind({ ...extent(0, 1, 'backing'), depth: 7 })).toBe('backing3');
    expect(extentKind(extent(0, 1, 'zero'))).toBe('zero');
    expect(extentKind({ ...extent(0, 1, 'hole'), zero: false })).toBe('unallocated');
    expect(extentKind(extent(0, 1, 'hole'))).toBe('zero');
  });
});

describe('aggregateColumns', () => {
  it('picks the kind covering most bytes of each column', () => {
    // 4 columns of 100 bytes: [data 70 | zero 30], [zero 100], [compressed 40, data 60], nothing.
    const extents = [extent(0, 70, 'data'), extent(70, 130, 'zero'), extent(200, 40, 'compressed'), extent(240, 60, 'data')];
    expect([...aggregateColumns(extents, 400, 4)]).toEqual([idx('data'), idx('zero'), idx('data'), NO_KIND]);
  });

  it('paints one small extent in a huge image into its column', () => {
    const extents = [extent(0, TiB, 'zero'), extent(TiB, 4096, 'data'), extent(TiB + 4096, TiB - 4096, 'zero')];
    const cols = aggregateColumns(extents, 2 * TiB, 1000);
    expect(cols.every((k) => k === idx('zero'))).toBe(true);
    // Where a column is 4 KiB wide, the data column shows.
    const MiB = 2 ** 20;
    const small = [extent(0, MiB / 2, 'zero'), extent(MiB / 2, 4096, 'data'), extent(MiB / 2 + 4096, MiB / 2 - 4096, 'zero')];
    const fine = aggregateColumns(small, MiB, 256);
    expect(fine[128]).toBe(idx('data'));
    expect([...fine].filter((k) => k === idx('zero')).length).toBe(255);
  });

  it('ignores bytes past the image size and handles zero sizes', () => {
    expect([...aggregateColumns([extent(0, 1000, 'data')], 100, 2)]).toEqual([idx('data'), idx('data')]);
    expect([...aggregateColumns([extent(0, 10, 'data')], 0, 3)]).toEqual([NO_KIND, NO_KIND, NO_KIND]);
  });

  it('folds a million extents of a 2 TiB image into 2000 columns in under 200 ms', () => {
    const count = 1_000_000;
    const size = 2 * TiB;
    const len = size / count;
    const kinds = ['data', 'zero', 'compressed', 'backing', 'hole'] as const;
    // Runs of 500 extents share a kind, so each 1000-extent column has a clear majority.
    const extents = Array.from({ length: count }, (_, i) => extent(i * len, len, kinds[Math.floor(i / 1000) % kinds.length]!));
    const t0 = performance.now();
    const cols = aggregateColumns(extents, size, 2000);
    const ms = performance.now() - t0;
    console.log(`aggregateColumns: ${count} extents -> 2000 columns in ${ms.toFixed(1)} ms`);
    expect(ms).toBeLessThan(200);
    for (let p = 0; p < 2000; p++) expect(KINDS[cols[p]!]).toBe(extentKind(extents[p * 500]!));
  });
});

describe('extentAt', () => {
  const extents = Array.from({ length: 1000 }, (_, i) => extent(i * 4096, 4096, i % 2 ? 'zero' : 'data'));

  it('finds the extent holding an offset, first and last bytes included', () => {
    expect(extentAt(extents, 0)).toBe(extents[0]);
    expect(extentAt(extents, 4095)).toBe(extents[0]);
    expect(extentAt(extents, 4096)).toBe(extents[1]);
    expect(extentAt(extents, 999 * 4096 + 17)).toBe(extents[999]);
  });

  it('answers undefined past the end and in gaps', () => {
    expect(extentAt(extents, 1000 * 4096)).toBeUndefined();
    expect(extentAt([extent(0, 10, 'data'), extent(20, 10, 'data')], 15)).toBeUndefined();
    expect(extentAt([], 0)).toBeUndefined();
  });
});
