/**
 * Growing VDI images. qemu-img cannot resize VDI at all ("Image format
 * driver does not support resize"); Platter grows an image in the room its
 * block map has before the data blocks, or moves the first data blocks to
 * make that room (as VBoxManage modifymedium --resize does), and refuses to
 * shrink.
 */
import { copyFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo, qemuIo } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const MiB = 1 << 20;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vdi-resize-')));
afterAll(() => t?.cleanup());

describe.skipIf(!HAS_QEMU)('vdi resize', () => {
  it('qemu-img refuses to resize vdi at all (what Platter goes beyond)', () => {
    const path = t.path('q.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', path, '5M']);
    const r = shStatus('qemu-img', ['resize', path, '10M']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('does not support resize');
  });

  for (const kind of [
    { label: 'dynamic', opts: [] as string[] },
    { label: 'static', opts: ['-o', 'static=on'] },
  ]) {
    it(`${kind.label}: grows within the block map's room; the old data stays, the new part reads as zeros`, async () => {
      const path = t.path(`grow-${kind.label}.vdi`);
      sh('qemu-img', ['create', '-q', '-f', 'vdi', ...kind.opts, path, '5M']);
      qemuIo(path, ['write -P 5 1M 1M', 'write -P 6 4M 4k'], 'vdi');
      const before = t.path(`grow-${kind.label}-before.vdi`);
      copyFileSync(path, before);
      // One sector of map: room for 128 blocks.
      const r = await platter(['resize', path, '+100M']);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe('Image resized.\n');
      expect(qemuInfo(path)['virtual-size']).toBe(105 * MiB);
      expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
      // Content equal up to the old size, zeros after (qemu-img compare checks the tail is zero).
      expect(qemuCompare(path, before)).toBe('Warning: Image size mismatch!\nImages are identical.');
      // QEMU writes into the new part and still checks clean.
      qemuIo(path, ['write -P 7 100M 8k'], 'vdi');
      expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
      expect(await platter(['resize', path, '128M'])).toMatchObject({ code: 0 });
      expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
    });
  }

  for (const kind of [
    { label: 'dynamic', opts: [] as string[] },
    { label: 'static', opts: ['-o', 'static=on'] },
  ]) {
    it(`${kind.label}: grows past the map's room by moving the first data blocks, as VirtualBox does`, async () => {
      const path = t.path(`move-${kind.label}.vdi`);
      // 512 blocks: a map of exactly 2 KiB with no room to spare; blocks 0-2 and 511 written.
      sh('qemu-img', ['create', '-q', '-f', 'vdi', ...kind.opts, path, '512M']);
      qemuIo(path, ['write -P 1 0 1M', 'write -P 2 1M 4k', 'write -P 3 2M 1M', 'write -P 4 511M 1M'], 'vdi');
      const before = t.path(`move-${kind.label}-before.vdi`);
      copyFileSync(path, before);
      const r = await platter(['resize', path, '1G']);
      expect(r.stderr).toBe('');
      expect(qemuInfo(path)['virtual-size']).toBe(1024 * MiB);
      expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
      expect(qemuCompare(path, before)).toBe('Warning: Image size mismatch!\nImages are identical.');
      qemuIo(path, ['write -P 9 900M 8k', 'write -P 8 5M 4k'], 'vdi');
      qemuIo(before, ['write -P 8 5M 4k'], 'vdi');
      expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
      const back = t.path(`move-${kind.label}-back.raw`);
      await platter(['dd', 'bs=1M', 'count=512', `if=${path}`, `of=${back}`, '-O', 'raw']);
      expect(qemuCompare(back, before)).toBe('Images are identical.');
    });
  }

  it('refuses shrinking and preallocation, in one line each', async () => {
    const path = t.path('limits.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', path, '5M']);
    const shrink = await platter(['resize', '--shrink', path, '4M']);
    expect(shrink.code).toBe(1);
    expect(shrink.stderr).toBe(`platter: ${path}: VDI images cannot be shrunk\n`);
    const prealloc = await platter(['resize', '--preallocation=full', path, '6M']);
    expect(prealloc.code).toBe(1);
    expect(prealloc.stderr).toBe(`platter: ${path}: Unsupported preallocation mode: full\n`);
    const big = await platter(['resize', path, String(0x1fffff80 * MiB + 512)]);
    expect(big.stderr).toBe(`platter: ${path}: Unsupported VDI image size (size is 0x1fffff8000200, max supported is 0x1fffff8000000)\n`);
    expect(qemuInfo(path)['virtual-size']).toBe(5 * MiB);
    expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
  });
});
