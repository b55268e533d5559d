/** ClusterCounts: counts kept in pages made on first use, read and searched across page boundaries. */
import { describe, expect, it } from 'vitest';
import { ClusterCounts } from './cluster-counts.js';

const PAGE = 1 << 16;

describe('ClusterCounts', () => {
  it('counts, and finds counts, on either side of a page boundary', () => {
    const c = new ClusterCounts();
    c.add(PAGE - 1);
    c.add(PAGE, 3);
    expect([c.get(PAGE - 1), c.get(PAGE), c.get(PAGE + 1), c.get(10 * PAGE)]).toEqual([1, 3, 0, 0]);
    expect(c.anyIn(0, PAGE - 1)).toBe(false);
    expect(c.anyIn(PAGE - 2, PAGE)).toBe(true);
    expect(c.anyIn(PAGE + 1, 5 * PAGE)).toBe(false);
    expect(c.highest()).toBe(PAGE);
    expect(new ClusterCounts().highest()).toBe(-1);
  });

  it('takes the first run of free clusters, through pages never made, and counts it', () => {
    const c = new ClusterCounts();
    for (let i = 0; i < 10; i++) c.add(i);
    c.add(12);
    expect(c.take(0, 1)).toBe(10);
    expect(c.take(0, 2)).toBe(13);
    expect(c.take(0, 1)).toBe(11);
    // A run across into a page nobody touched.
    c.add(PAGE - 3);
    expect(c.take(PAGE - 4, 4)).toBe(PAGE - 2);
    expect([c.get(PAGE - 2), c.get(PAGE + 1)]).toEqual([1, 1]);
    c.release(PAGE - 2, 4);
    expect(c.anyIn(PAGE - 2, PAGE + 2)).toBe(false);
  });
});
