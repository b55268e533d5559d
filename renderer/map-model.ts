/**
 * The allocation map as the inspector draws it: `map` extents folded into one
 * dominant kind per pixel column, and the extent under a byte offset. Both stay
 * fast for a 2 TiB image with a million extents: the fold is one pass over the
 * extents and the columns (O(extents + pixels)), the lookup a binary search.
 */
import type { MapExtent } from '../electron/ipc/contract.js';

/** What a range of the image is, in the order the legend lists them. */
export const KINDS = ['data', 'compressed', 'backing', 'backing2', 'backing3', 'zero', 'unallocated'] as const;
export type ExtentKind = (typeof KINDS)[number];

export const KIND_LABEL: Record<ExtentKind, string> = {
  data: 'Data',
  compressed: 'Compressed',
  backing: 'From the backing file',
  backing2: 'From its backing file',
  backing3: 'From deeper in the chain',
  zero: 'Zero',
  unallocated: 'Unallocated',
};

/**
 * Index into KINDS of what an extent holds: compressed and backing win over
 * plain data, and each backing depth has its colour (depth 3 and below share one).
 */
export function kindIndex(e: MapExtent): number {
  if (e.compressed) return 1;
  if (e.depth > 0 && e.present) return 1 + Math.min(e.depth, 3);
  if (e.zero) return 5;
  if (e.data) return 0;
  return 6;
}

export function extentKind(e: MapExtent): ExtentKind {
  return KINDS[kindIndex(e)]!;
}

/** A column nobody's bytes reach (an image shorter than its map, or a zero-sized one). */
export const NO_KIND = 255;

/**
 * One KINDS index per pixel column: the kind covering the most bytes of that
 * column. `extents` must be sorted by start and not overlap (as map returns
 * them); bytes past `size` are ignored.
 */
export function aggregateColumns(extents: readonly MapExtent[], size: number, pixels: number): Uint8Array {
  const out = new Uint8Array(pixels).fill(NO_KIND);
  if (pixels <= 0 || size <= 0) return out;
  const n = KINDS.length;
  // Bytes of each kind per column, summed in place.
  const bytes = new Float64Array(pixels * n);
  const perPixel = size / pixels;
  for (const e of extents) {
    const start = e.start;
    const end = Math.min(e.start + e.length, size);
    if (end <= start) continue;
    const k = kindIndex(e);
    const first = Math.floor(start / perPixel);
    const last = Math.min(pixels - 1, Math.floor((end - 1) / perPixel));
    // Each column is either partly covered (at most twice per extent) or fully
    // covered by exactly one extent, so this loop is O(extents + pixels) overall.
    for (let p = first; p <= last; p++) {
      const lo = Math.max(start, p * perPixel);
      const hi = Math.min(end, (p + 1) * perPixel);
      bytes[p * n + k]! += hi - lo;
    }
  }
  for (let p = 0; p < pixels; p++) {
    let best = NO_KIND;
    let bestBytes = 0;
    for (let k = 0; k < n; k++) {
      const b = bytes[p * n + k]!;
      if (b > bestBytes) {
        best = k;
        bestBytes = b;
      }
    }
    out[p] = best;
  }
  return out;
}

/** The extent holding byte `offset`, by binary search over extents sorted by start; undefined in a gap. */
export function extentAt(extents: readonly MapExtent[], offset: number): MapExtent | undefined {
  let lo = 0;
  let hi = extents.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const e = extents[mid]!;
    if (offset < e.start) hi = mid - 1;
    else if (offset >= e.start + e.length) lo = mid + 1;
    else return e;
  }
  return undefined;
}
