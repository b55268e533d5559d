/**
 * check for VDI, as qemu-img checks it: every map entry must point inside
 * the image's blocks, no data block may serve two guest blocks, and the
 * header's count of allocated blocks must match the map. Like QEMU it
 * reports no cluster counts and repairs nothing.
 */
import { emptyCheckReport, type CheckReport, type RepairMode } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { VdiHeader } from './header.js';
import { isAllocated } from './limits.js';

export function checkVdi(header: VdiHeader, bmap: Uint32Array, repair: RepairMode, log: (line: string) => void): CheckReport {
  if (repair !== 'none') {
    const message = 'VDI images cannot be repaired (qemu-img cannot repair them either)';
    throw new BlockError('Unsupported', message, { op: 'check' });
  }
  const report: CheckReport = emptyCheckReport();
  const blocks = header.blocksInImage;
  const used = new Uint8Array(blocks);
  let allocated = 0;
  for (let g = 0; g < blocks; g++) {
    const e = bmap[g];
    if (!isAllocated(e)) continue;
    if (e >= blocks) {
      log(`ERROR: block index ${g} too large, is ${e}`);
      report.corruptions++;
      continue;
    }
    allocated++;
    if (used[e]) {
      // qemu-img names the data block twice here; so does Platter, for the same output.
      log(`ERROR: block index ${e} also used by ${e}`);
      report.corruptions++;
    } else used[e] = 1;
  }
  if (allocated !== header.blocksAllocated) {
    log(`ERROR: allocated blocks mismatch, is ${allocated}, should be ${header.blocksAllocated}`);
    report.corruptions++;
  }
  return report;
}
