/**
 * check for VHDX, as qemu-img checks it: a log replayed when opening counts
 * as a fixed corruption; BAT entries past the end of the file or into the
 * image's structures (found when opening for check) count as corruptions,
 * not repaired, as in QEMU. A log left to replay (a read-only check, which
 * QEMU cannot open at all) counts as a corruption too.
 */
import { emptyCheckReport, type CheckReport } from '../../image/driver.js';

export function checkVhdx(
  found: { logReplayed: boolean; logPending: boolean; problems: readonly string[] },
  log: (line: string) => void,
): CheckReport {
  const report: CheckReport = { ...emptyCheckReport(), corruptionsFixed: found.logReplayed ? 1 : 0 };
  if (found.logPending) {
    log('ERROR: the VHDX log needs to be replayed; check -r all replays it');
    report.corruptions++;
  }
  for (const line of found.problems) {
    log(line);
    report.corruptions++;
  }
  return report;
}
