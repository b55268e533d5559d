import { describe, expect, it } from 'vitest';
import { mapLimited } from './parallel.js';

describe('mapLimited', () => {
  it('keeps the order of results and never runs more than the limit at once', async () => {
    let running = 0;
    let most = 0;
    const out = await mapLimited(20, 3, async (i) => {
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, (i * 7) % 5));
      running--;
      return i * 2;
    });
    expect(out).toEqual(Array.from({ length: 20 }, (_, i) => i * 2));
    expect(most).toBe(3);
  });

  it('handles nothing to do, and rejects with the first failure', async () => {
    expect(await mapLimited(0, 4, async () => 1)).toEqual([]);
    await expect(mapLimited(5, 2, async (i) => (i === 3 ? Promise.reject(new Error('no')) : i))).rejects.toThrow('no');
  });
});
