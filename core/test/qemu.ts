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
export function qemuCheck(path: string, format = 'qcow2', cwd?: string): QemuCheck {
  const r = shStatus('qemu-img', ['check', '--output=json', '-f', format, path], { cwd });
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

/** Runs qemu-io commands (`write -P 1 0 64k`, `write -z ...`, `discard ...`) on an image; each must succeed. */
export function qemuIo(path: string, cmds: string[], format = 'qcow2'): void {
  const r = shStatusOrThrow('qemu-io', ['-f', format, ...cmds.flatMap((c) => ['-c', c]), path]);
  // qemu-io exits 0 when a command fails; it says so on its output.
  if (r.stderr || /error|fail/i.test(r.stdout)) throw new Error(`qemu-io ${cmds.join('; ')} on ${path}: ${r.stdout}${r.stderr}`);
}

/** `qemu-img info --output=json` of one image. */
export function qemuInfo(path: string): Record<string, unknown> {
  return JSON.parse(shStatusOrThrow('qemu-img', ['info', '--output=json', path]).stdout) as Record<string, unknown>;
}

/** `qemu-img compare`'s verdict on two images' guest contents (formats probed, backing files followed). */
export function qemuCompare(a: string, b: string): string {
  const r = shStatus('qemu-img', ['compare', a, b]);
  return (r.stdout + r.stderr).trim();
}

function shStatusOrThrow(cmd: string, args: string[]) {
  const r = shStatus(cmd, args);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r;
}
