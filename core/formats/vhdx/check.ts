/**
 * check for VHDX, as qemu-img checks it: a log replayed when opening counts
 * as a fixed corruption; BAT entries past the end of the file or into the
 * image's structures (found when opening for check) count as corruptions,
 * not repaired, as in QEMU. A log left to replay (a read-only check, which
 * QEMU cannot open at all) counts as a corruption too.
 *
 * Beyond QEMU: a damaged first copy of the region table, which QEMU cannot
 * open past and Platter reads the second copy instead of, is a corruption
 * that -r all mends by writing the second copy over it.
 */
import { emptyCheckReport, type CheckReport, type RepairMode } from '../../image/driver.js';
import type { VhdxParts } from './image.js';

export async function checkVhdx(
  found: Pick<VhdxParts, 'logReplayed' | 'logPending' | 'problems' | 'damagedRegionTable'>,
  repair: RepairMode,
  log: (line: string) => void,
  /** Writes the good copy of the region table over the first. */
  mendRegionTable: (good: Uint8Array) => Promise<void>,
): Promise<CheckReport> {
  const report: CheckReport = { ...emptyCheckReport(), corruptionsFixed: found.logReplayed ? 1 : 0 };
  if (found.logPending) {
    log('ERROR: the VHDX log needs to be replayed; check -r all replays it');
    report.corruptions++;
  }
  for (const line of found.problems) {
    log(line);
    report.corruptions++;
  }
  const damaged = found.damagedRegionTable;
  if (damaged && repair === 'all') {
    log(`Repairing the region table's first copy from its second (${damaged.why})`);
    await mendRegionTable(damaged.good);
    report.corruptionsFixed++;
  } else if (damaged) {
    log(`ERROR the region table's first copy is damaged, its second is in use: ${damaged.why}`);
    report.corruptions++;
  }
  return report;
}
