/** How big a qcow2 image gets: QEMU's arithmetic, so `measure` answers alike. */
import type { Measurement, PersistentBitmap } from '../../image/driver.js';
import type { OptionValues } from '../../options/schema.js';
import { bitmapDataClusters, bitmapDirectoryEntrySize } from './bitmaps.js';
import { checkExtendedL2, l1EntriesFor } from './create.js';
import { L2_ENTRY_BYTES, L2_EXTENDED_ENTRY_BYTES } from './limits.js';

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/** Refcount table and blocks for `clusters`, counting themselves (a fixed point). */
function refcountMetadataSize(clusters: number, clusterSize: number, refcountBits: number): number {
  const blocksPerTableCluster = clusterSize / 8;
  const perBlock = (clusterSize * 8) / refcountBits;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / perBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return (blocks + table) * clusterSize;
}

/** Header, L1, L2 and refcount metadata plus every data cluster. */
function fullSize(size: number, clusterSize: number, refcountBits: number, l2EntryBytes: number): number {
  const aligned = roundUp(size, clusterSize);
  let meta = clusterSize;
  const l2Entries = roundUp(aligned / clusterSize, clusterSize / l2EntryBytes);
  meta += l2Entries * l2EntryBytes;
  const l1Entries = roundUp((l2Entries * l2EntryBytes) / clusterSize, clusterSize / 8);
  meta += l1Entries * 8;
  meta += refcountMetadataSize((meta + aligned) / clusterSize, clusterSize, refcountBits);
  return meta + aligned;
}

/**
 * Room for a copy of `bitmaps` over `size` guest bytes: every data cluster
 * allocated, each table, and the directory (QEMU's estimate).
 */
function bitmapsSize(bitmaps: readonly PersistentBitmap[], size: number, clusterSize: number): number {
  let total = 0;
  let directory = 0;
  const enc = new TextEncoder();
  for (const b of bitmaps) {
    const clusters = bitmapDataClusters(size, b.granularity, clusterSize);
    total += clusters * clusterSize + roundUp(clusters * 8, clusterSize);
    directory += bitmapDirectoryEntrySize(enc.encode(b.name).length);
  }
  return total + roundUp(directory, clusterSize);
}

export function measureQcow2(
  size: number,
  dataExtents: readonly { offset: number; length: number }[],
  options: OptionValues,
  sourceBitmaps?: readonly PersistentBitmap[],
): Measurement {
  const cs = options.cluster_size as number;
  checkExtendedL2(options);
  const extended = options.extended_l2 === true;
  l1EntriesFor(size, cs, extended);
  const virtual = roundUp(size, cs);
  // Data clusters the copy needs, each counted once.
  let required = 0;
  let counted = 0;
  for (const e of dataExtents) {
    const start = Math.max(e.offset, counted);
    const end = e.offset + e.length;
    if (start >= end) continue;
    const first = Math.floor(start / cs) * cs;
    counted = roundUp(end, cs);
    required += counted - first;
  }
  const prealloc = options.preallocation;
  if (prealloc === 'falloc' || prealloc === 'full') required = virtual;
  const entryBytes = extended ? L2_EXTENDED_ENTRY_BYTES : L2_ENTRY_BYTES;
  const fullyAllocated = fullSize(size, cs, options.refcount_bits as number, entryBytes);
  const m: Measurement = { required: fullyAllocated - virtual + required, fullyAllocated };
  // Version 2 images cannot hold bitmaps.
  if (sourceBitmaps !== undefined && options.compat !== '0.10') m.bitmaps = bitmapsSize(sourceBitmaps, size, cs);
  return m;
}
