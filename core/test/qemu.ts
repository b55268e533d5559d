/** Helpers for tests that check images with QEMU's own tools. */
import { shStatus } from './tmp.js';

export interface QemuCheck {
  /** qemu-img check's exit status: 0 clean, 2 corrupt, 3 leaks only, 1 could not check. */
  status: number;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  allocatedClusters: number;
  /** Everything it printed, for failure messages. */
  text: string;
}

/**
 * `qemu-img check --output=json`. qemu leaves out the counters that are zero
 * ("corruptions", "leaks"); a report that does not parse counts as an error.
 */
export function qemuCheck(path: string, format = 'qcow2'): QemuCheck {
  const r = shStatus('qemu-img', ['check', '--output=json', '-f', format, path]);
  let report: Record<string, unknown> | undefined;
  try {
    report = JSON.parse(r.stdout);
  } catch {
    report = undefined;
  }
  const n = (key: string, missing: number) => (report ? ((report[key] as number | undefined) ?? missing) : -1);
  return {
    status: r.status,
    corruptions: n('corruptions', 0),
    leaks: n('leaks', 0),
    checkErrors: n('check-errors', -1),
    allocatedClusters: n('allocated-clusters', -1),
    text: r.stdout + r.stderr,
  };
}

/** The parts of a check that must all be zero for a clean image. */
export function problems(c: QemuCheck) {
  return { status: c.status, corruptions: c.corruptions, leaks: c.leaks, checkErrors: c.checkErrors };
}

export const CLEAN = { status: 0, corruptions: 0, leaks: 0, checkErrors: 0 };
