import { describe, expect, it } from 'vitest';
import { Mutex, RangeLock } from './locks.js';

/** A promise and the function that settles it, for holding a request open. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open!: () => void;
  return { opened: new Promise<void>((r) => (open = r)), open };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('RangeLock', () => {
  it('runs requests on different units at the same time', async () => {
    const lock = new RangeLock();
    const g = gate();
    const log: string[] = [];
    const a = lock.hold(0, 3, async () => {
      log.push('a starts');
      await g.opened;
      log.push('a ends');
    });
    const b = lock.hold(4, 7, async () => {
      log.push('b runs');
    });
    await b;
    expect(log).toEqual(['a starts', 'b runs']);
    g.open();
    await a;
  });

  it('makes an overlapping request wait for the earlier one', async () => {
    const lock = new RangeLock();
    const g = gate();
    const log: string[] = [];
    const a = lock.hold(0, 3, async () => {
      await g.opened;
      log.push('a');
    });
    const b = lock.hold(3, 5, async () => {
      log.push('b');
    });
    await tick();
    expect(log).toEqual([]);
    g.open();
    await Promise.all([a, b]);
    expect(log).toEqual(['a', 'b']);
  });

  it('serves waiters first come, first served: a whole-image request is not overtaken', async () => {
    const lock = new RangeLock();
    const g = gate();
    const log: string[] = [];
    const a = lock.hold(0, 0, async () => {
      await g.opened;
      log.push('small 1');
    });
    const all = lock.all(async () => {
      log.push('all');
    });
    // Overlaps only the whole-image request, which came first.
    const later = lock.hold(9, 9, async () => {
      log.push('small 2');
    });
    await tick();
    expect(log).toEqual([]);
    g.open();
    await Promise.all([a, all, later]);
    expect(log).toEqual(['small 1', 'all', 'small 2']);
  });

  it('releases the units when the request fails', async () => {
    const lock = new RangeLock();
    await expect(lock.hold(0, 1, () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(lock.hold(0, 1, async () => 'next')).resolves.toBe('next');
  });
});

describe('Mutex', () => {
  it('runs one at a time, in order', async () => {
    const m = new Mutex();
    const log: number[] = [];
    await Promise.all(
      [3, 1, 2].map((d, i) =>
        m.run(async () => {
          log.push(i);
          await new Promise((r) => setTimeout(r, d));
          log.push(i);
        }),
      ),
    );
    expect(log).toEqual([0, 0, 1, 1, 2, 2]);
  });
});
