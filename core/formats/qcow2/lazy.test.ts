/**
 * lazy_refcounts: the image is marked dirty while Platter writes to it and
 * clean after a close; a crash leaves it dirty, and the next read-write open
 * rebuilds the refcounts (qemu-img check clean, data intact).
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { spawnPlatter } from '../../test/cli.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir()));
afterAll(() => t?.cleanup());

const dirtyFlag = (p: string) => JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['dirty-flag'];

describe.skipIf(!HAS_QEMU)('lazy refcounts', () => {
  it('dirty while writing, clean after close', async () => {
    const p = t.path('lazy.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', p, '4M']);
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    expect(dirtyFlag(p)).toBe(false);
    await img.write(new Uint8Array(100000).fill(3), 5000);
    expect(dirtyFlag(p)).toBe(true);
    await img.close();
    expect(dirtyFlag(p)).toBe(false);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(0);
  });

  it('a writer killed mid-way leaves a dirty image that the next open repairs', async () => {
    const p = t.path('crash.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=4096', p, '64M']);
    // A writer slowed down by -r, killed with SIGKILL once it has written some.
    const src = t.path('src.raw');
    sh('qemu-img', ['create', '-q', '-f', 'raw', src, '64M']);
    sh('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 60M', src]);
    const child = spawnPlatter(['convert', '-n', '--progress=json', '-r', '4M', '-f', 'raw', '-O', 'qcow2', src, p]);
    await new Promise<void>((resolve) =>
      child.stdout.on('data', (d: Buffer) => {
        if (d.toString().split('\n').some((l) => l && JSON.parse(l).done > 4 << 20)) resolve();
      }),
    );
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    expect(dirtyFlag(p)).toBe(true);
    // Whatever the crash left, qemu-img finds no corruption (leaks allowed).
    expect([0, 3]).toContain(shStatus('qemu-img', ['check', p]).status);
    const before = t.path('before.raw');
    sh('qemu-img', ['convert', '-O', 'raw', p, before]);
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    await img.close();
    expect(dirtyFlag(p)).toBe(false);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(0);
    const after = t.path('after.raw');
    sh('qemu-img', ['convert', '-O', 'raw', p, after]);
    expect(readFileSync(after).equals(readFileSync(before))).toBe(true);
  });
});
