/**
 * How big a VHD gets. qemu-img 7.2 cannot measure vpc ("does not support
 * size measurement"), so this is the layout Platter and qemu-img both write:
 * fixed, the guest's bytes and the footer; dynamic, the footer copy, the
 * dynamic header, the BAT, a bitmap and 2 MiB block for each block that
 * holds data (every block when fully allocated), and the footer.
 */
import type { Measurement } from '../../image/driver.js';
import type { OptionValues } from '../../options/schema.js';
import { vpcLayout } from './create.js';
import * as L from './limits.js';

export function measureVpc(
  size: number,
  dataExtents: readonly { offset: number; length: number }[],
  options: OptionValues,
): Measurement {
  const layout = vpcLayout(size, options.force_size === true);
  if (options.subformat === 'fixed') {
    const bytes = layout.size + L.FOOTER_BYTES;
    return { required: bytes, fullyAllocated: bytes };
  }
  const BS = L.DEFAULT_BLOCK_SIZE;
  const perBlock = L.bitmapBytes(BS) + BS;
  // Blocks holding data, each counted once.
  let used = 0;
  let counted = 0;
  for (const e of dataExtents) {
    const first = Math.max(Math.floor(e.offset / BS), counted);
    const end = Math.ceil((e.offset + e.length) / BS);
    if (end > first) used += end - first;
    counted = Math.max(counted, end);
  }
  return {
    required: layout.metadataBytes + used * perBlock,
    fullyAllocated: layout.metadataBytes + layout.entries * perBlock,
  };
}
