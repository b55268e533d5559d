/**
 * Host clusters whose refcount dropped to zero, to be given back to the file
 * system (holes punched), as QEMU passes discards through when a snapshot is
 * deleted, an image is emptied by commit, or the guest discards.
 *
 * They are punched only once the metadata that stopped pointing at them is
 * on disk (written back and flushed): before that, a crash could leave a
 * table in the file mapping a hole where data was, and a compressed cluster
 * read as zeros fails to inflate. A cluster handed out again in the meantime
 * has a count again and is left alone.
 */
import type { Protocol } from '../../io/protocol.js';
import type { Refcounts } from './refcounts.js';

/** Runs kept before they are given back early (each a few dozen bytes). */
export const MAX_FREED_RUNS = 1 << 14;

export class FreedClusters {
  /** [first cluster, count]: frees mostly come in order, so runs stay few. */
  private runs: [number, number][] = [];

  add(c: number): void {
    const last = this.runs[this.runs.length - 1];
    if (last && c === last[0] + last[1]) last[1]++;
    else this.runs.push([c, 1]);
  }

  get size(): number {
    return this.runs.length;
  }

  /**
   * Punches every recorded cluster still free in `refcounts`. The caller has
   * made the metadata durable and holds the image's metadata lock, so no
   * cluster can be handed out while this runs.
   */
  async punch(file: Protocol, refcounts: Refcounts): Promise<void> {
    const runs = mergeRuns(this.runs);
    this.runs = [];
    const cs = refcounts.clusterSize;
    // Past the end of the file there is nothing to give back.
    const end = Math.ceil((await file.size()) / cs);
    for (const [first, count] of runs) {
      const stop = Math.min(first + count, end);
      for (let c = first; c < stop; ) {
        if ((await refcounts.get(c)) !== 0) {
          c++;
          continue;
        }
        let n = 1;
        while (c + n < stop && (await refcounts.get(c + n)) === 0) n++;
        await file.discard(c * cs, n * cs);
        c += n;
      }
    }
  }
}

/**
 * The runs in file order, neighbours joined: a file-system block smaller
 * than a cluster run is only given back when one punch covers it whole.
 */
function mergeRuns(runs: [number, number][]): [number, number][] {
  runs.sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const [first, count] of runs) {
    const last = merged[merged.length - 1];
    if (last && first <= last[0] + last[1]) last[1] = Math.max(last[1], first + count - last[0]);
    else merged.push([first, count]);
  }
  return merged;
}
