/**
 * Serialises requests that touch the same units (clusters, blocks) of an
 * image and lets the others run at once, as QEMU's block layer serialises
 * overlapping requests. Waiters are served first come, first served: a
 * request waits only for earlier requests it overlaps, so a whole-image
 * request (a snapshot, a resize) is not starved by a stream of small ones.
 */
interface Held {
  first: number;
  last: number;
  done: Promise<void>;
}

export class RangeLock {
  private readonly held = new Set<Held>();

  /** Runs `fn` once no earlier request overlaps units [first, last]. */
  async hold<T>(first: number, last: number, fn: () => Promise<T>): Promise<T> {
    const before = [...this.held].filter((h) => h.first <= last && first <= h.last).map((h) => h.done);
    let release!: () => void;
    const entry: Held = { first, last, done: new Promise<void>((r) => (release = r)) };
    // Registered before waiting, so later requests queue behind this one.
    this.held.add(entry);
    try {
      await Promise.all(before);
      return await fn();
    } finally {
      this.held.delete(entry);
      release();
    }
  }

  /** Runs `fn` with the whole image to itself. */
  all<T>(fn: () => Promise<T>): Promise<T> {
    return this.hold(0, Number.POSITIVE_INFINITY, fn);
  }
}

/** One change at a time: the metadata lock of an image. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise((r) => (release = r));
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
