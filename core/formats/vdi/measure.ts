/**
 * How big a VDI image gets. qemu-img 7.2 cannot measure VDI ("does not
 * support size measurement"), so this is the layout Platter and qemu-img
 * both write: header, block map, and a 1 MiB block per guest block that
 * holds data (every block when static).
 */
import type { Measurement } from '../../image/driver.js';
import type { OptionValues } from '../../options/schema.js';
import { vdiDiskSize } from './create.js';
import { bmapBytes } from './header.js';
import { BLOCK_SIZE, HEADER_BYTES } from './limits.js';

export function measureVdi(
  size: number,
  dataExtents: readonly { offset: number; length: number }[],
  options: OptionValues,
): Measurement {
  const blocks = Math.ceil(vdiDiskSize(size) / BLOCK_SIZE);
  const meta = HEADER_BYTES + bmapBytes(blocks);
  // Blocks holding data, each counted once.
  let used = 0;
  let counted = 0;
  for (const e of dataExtents) {
    const first = Math.max(Math.floor(e.offset / BLOCK_SIZE), counted);
    const end = Math.ceil((e.offset + e.length) / BLOCK_SIZE);
    if (end > first) used += end - first;
    counted = Math.max(counted, end);
  }
  const fullyAllocated = meta + blocks * BLOCK_SIZE;
  return { required: options.static === true ? fullyAllocated : meta + used * BLOCK_SIZE, fullyAllocated };
}
