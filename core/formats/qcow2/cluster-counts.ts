/**
 * Counts per host cluster, as check tallies the references to each. Kept in
 * pages made on first use, so memory follows the clusters in use, not the
 * file's size: a sparse file of terabytes with a few clusters referenced
 * costs a few pages.
 */

/** Clusters per page (256 KiB of counts). */
const PAGE = 1 << 16;

export class ClusterCounts {
  private readonly pages = new Map<number, Uint32Array>();

  get(c: number): number {
    return this.pages.get(Math.floor(c / PAGE))?.[c % PAGE] ?? 0;
  }

  /** Adds `n` to cluster `c`'s count; returns the new count. */
  add(c: number, n = 1): number {
    const p = Math.floor(c / PAGE);
    let page = this.pages.get(p);
    if (!page) this.pages.set(p, (page = new Uint32Array(PAGE)));
    return (page[c % PAGE] += n);
  }

  /** Whether any cluster in [from, to) has a count. */
  anyIn(from: number, to: number): boolean {
    for (let p = Math.floor(from / PAGE); p * PAGE < to; p++) {
      const page = this.pages.get(p);
      if (!page) continue;
      const start = Math.max(from - p * PAGE, 0);
      const end = Math.min(to - p * PAGE, PAGE);
      for (let i = start; i < end; i++) if (page[i]) return true;
    }
    return false;
  }

  /** The highest cluster with a count, or -1. */
  highest(): number {
    const pages = [...this.pages.keys()].sort((a, b) => b - a);
    for (const p of pages) {
      const page = this.pages.get(p)!;
      for (let i = PAGE - 1; i >= 0; i--) if (page[i]) return p * PAGE + i;
    }
    return -1;
  }

  /** The first of `n` clusters in a row with no count, at or after `from`; marks them counted once. */
  take(from: number, n: number): number {
    let start = from;
    for (let c = from; c < start + n; c++) {
      // A missing page is all free.
      if (c % PAGE === 0 && !this.pages.has(c / PAGE)) {
        c += PAGE - 1;
        continue;
      }
      if (this.get(c)) start = c + 1;
    }
    for (let c = start; c < start + n; c++) this.add(c);
    return start;
  }

  /** Forgets one count of each of `n` clusters from `c` (taken and not used after all). */
  release(c: number, n: number): void {
    for (let i = c; i < c + n; i++) this.add(i, -1);
  }
}
