/**
 * libvhdi's vhdiinfo (Debian's libvhdi-utils), an independent reader of VHD
 * and VHDX files, for tests that check what Platter writes against it.
 */
import { expect } from 'vitest';
import { shStatus } from './tmp.js';

/** vhdiinfo's report on an image it reads without complaint: exit 0, nothing on stderr. */
export function vhdiinfo(path: string): string {
  const r = shStatus('vhdiinfo', [path]);
  expect(r.status, r.stdout + r.stderr).toBe(0);
  expect(r.stderr).toBe('');
  return r.stdout;
}

/** The media size vhdiinfo reports for an image it reads without complaint. */
export function vhdiMediaSize(path: string): number | undefined {
  const m = /Media size\s*:.*\((\d+) bytes\)/.exec(vhdiinfo(path));
  return m ? Number(m[1]) : undefined;
}
