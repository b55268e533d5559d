/**
 * nocow=on: the new file gets btrfs's NOCOW attribute (lsattr shows C), on a
 * real btrfs in a loop device; elsewhere the option is accepted and ignored,
 * as in QEMU.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdirSync, openSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { platter } from '../test/cli.js';
import { hasTool, sh, tempDir } from '../test/tmp.js';

const t = tempDir();
let mnt: string | undefined;

/** A 200 MiB btrfs mounted from a loop device, or why there can't be one here. */
function mountBtrfs(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root';
  if (!hasTool('mkfs.btrfs', 'apt-get install btrfs-progs')) return 'no mkfs.btrfs';
  const img = t.path('btrfs.img');
  const fd = openSync(img, 'w');
  ftruncateSync(fd, 200 << 20);
  closeSync(fd);
  sh('mkfs.btrfs', ['-q', img]);
  const dir = t.path('mnt');
  mkdirSync(dir);
  const r = spawnSync('mount', ['-o', 'loop', img, dir], { encoding: 'utf8' });
  if (r.status !== 0) return `mount failed: ${r.stderr.trim()}`;
  mnt = dir;
  return undefined;
}

const attrs = (path: string) => execFileSync('lsattr', ['-d', path], { encoding: 'utf8' }).split(' ')[0];

const why = mountBtrfs();
if (why) console.warn(`SKIPPED nocow tests on btrfs: ${why}`);
afterAll(() => {
  if (mnt) spawnSync('umount', [mnt]);
  t?.cleanup();
});

describe('nocow', () => {
  it.skipIf(why).each(['raw', 'qcow2'])('create -f %s -o nocow=on sets the attribute; without it, not', async (fmt) => {
    const on = `${mnt}/on.${fmt}`;
    const off = `${mnt}/off.${fmt}`;
    expect((await platter(['create', '-q', '-f', fmt, '-o', 'nocow=on', on, '64M'])).code).toBe(0);
    expect((await platter(['create', '-q', '-f', fmt, off, '64M'])).code).toBe(0);
    expect(attrs(on)).toContain('C');
    expect(attrs(off)).not.toContain('C');
  });

  it.skipIf(why)('convert -o nocow=on sets it on the target', async () => {
    const src = t.path('src.raw');
    sh('qemu-img', ['create', '-q', '-f', 'raw', src, '4M']);
    const out = `${mnt}/converted.qcow2`;
    expect((await platter(['convert', '-O', 'qcow2', '-o', 'nocow=on', src, out])).code).toBe(0);
    expect(attrs(out)).toContain('C');
  });

  it('is accepted and ignored where the file system has no such attribute', async () => {
    const out = t.path('plain.qcow2');
    const r = await platter(['create', '-q', '-f', 'qcow2', '-o', 'nocow=on', out, '1M']);
    expect(r).toMatchObject({ code: 0, stderr: '' });
  });

  it('is listed in -o help for every format, as qemu-img lists it', async () => {
    for (const fmt of ['raw', 'qcow2']) {
      expect((await platter(['create', '-f', fmt, '-o', 'help'])).stdout).toContain(
        '  nocow=<bool (on/off)>  - Turn off copy-on-write (valid only on btrfs)\n',
      );
    }
  });
});
