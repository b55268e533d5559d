/**
 * How big a VHDX image gets. qemu-img 7.2 cannot measure VHDX ("does not
 * support size measurement"), so this is the layout Platter writes: up to
 * the data offset (header section, log, BAT, metadata, QEMU's gap), then a
 * block per payload block that holds data (every block when fixed).
 */
import type { Measurement } from '../../image/driver.js';
import type { OptionValues } from '../../options/schema.js';
import { batGeometry } from './bat.js';
import { vhdxLayout } from './create.js';

export function measureVhdx(
  size: number,
  dataExtents: readonly { offset: number; length: number }[],
  options: OptionValues,
): Measurement {
  const l = vhdxLayout(size, options);
  const g = batGeometry(l.size, l.blockSize, l.logicalSectorSize, false);
  let used = 0;
  let counted = 0;
  for (const e of dataExtents) {
    const first = Math.max(Math.floor(e.offset / l.blockSize), counted);
    const end = Math.min(Math.ceil((e.offset + e.length) / l.blockSize), g.dataBlocks);
    if (end > first) used += end - first;
    counted = Math.max(counted, end);
  }
  const fullyAllocated = l.dataOffset + g.dataBlocks * l.blockSize;
  return { required: l.fixed ? fullyAllocated : l.dataOffset + used * l.blockSize, fullyAllocated };
}
