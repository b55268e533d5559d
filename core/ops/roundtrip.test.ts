/**
 * A disk moved between hypervisors and back: VirtualBox (VDI) -> VMware's
 * streamOptimized VMDK (what OVF appliances carry) -> qcow2 -> VDI. Every hop
 * is a Platter convert; the guest bytes must come back identical, every
 * intermediate image must satisfy qemu-img (compare equal to the source,
 * check clean where qemu-img checks that format), and each hop must keep
 * the holes (never a fully allocated copy of a sparse disk).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { platter } from '../test/cli.js';
import { CLEAN, problems, qemuCheck } from '../test/qemu.js';
import { hasTool, shStatus, tempDir } from '../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const MiB = 1 << 20;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-roundtrip-')));
afterAll(() => t?.cleanup());

/** A 48 MiB guest: random data (some of it unaligned), zeros written as data, and holes. */
function makeRaw(path: string): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, 48 * MiB);
  const pieces: [number, number][] = [[0, MiB], [3 * MiB + 4096, 70 * 1024], [9 * MiB - 512, 1024], [20 * MiB, 5 * MiB], [48 * MiB - 4096, 4096]];
  for (const [at, len] of pieces) writeSync(fd, randomBytes(len), 0, len, at);
  writeSync(fd, Buffer.alloc(MiB), 0, MiB, 30 * MiB);
  closeSync(fd);
}

async function hash(path: string): Promise<string> {
  const r = await platter(['hash', path]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.split(/\s+/)[0];
}

describe.skipIf(!HAS_QEMU)('convert round trip VDI -> VMDK (streamOptimized) -> qcow2 -> VDI', () => {
  it('gives back the same guest bytes, and every hop is a sound image', async () => {
    const raw = t.path('guest.raw');
    makeRaw(raw);
    const hops: { file: string; format: string; options?: string; checkable: boolean }[] = [
      { file: t.path('disk.vdi'), format: 'vdi', checkable: true },
      { file: t.path('disk.vmdk'), format: 'vmdk', options: 'subformat=streamOptimized', checkable: true },
      { file: t.path('disk.qcow2'), format: 'qcow2', checkable: true },
      { file: t.path('back.vdi'), format: 'vdi', checkable: true },
    ];
    let source = raw;
    for (const hop of hops) {
      const args = ['convert', '-O', hop.format, ...(hop.options ? ['-o', hop.options] : []), source, hop.file];
      const r = await platter(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      const cmp = shStatus('qemu-img', ['compare', raw, hop.file]);
      expect(cmp.stdout + cmp.stderr, `${hop.format}: qemu-img compare with the original`).toContain('Images are identical');
      if (hop.checkable) expect(problems(qemuCheck(hop.file, hop.format)), `qemu-img check of the ${hop.format}`).toEqual(CLEAN);
      source = hop.file;
    }
    expect(await hash(hops[hops.length - 1].file)).toBe(await hash(raw));
    // The holes survived: the last image stores far less than the guest's 48 MiB.
    const map = JSON.parse((await platter(['map', '--output=json', hops[hops.length - 1].file])).stdout) as { length: number; data: boolean }[];
    const stored = map.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
    expect(stored).toBeLessThan(16 * MiB);
  });
});
