/**
 * Growing VDI images. qemu-img cannot resize VDI at all ("Image format
 * driver does not support resize"); Platter grows an image as far as its
 * block map has room before the data blocks, and refuses to shrink.
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

  it('refuses growth past the map room, and shrinking, in one line each', async () => {
    const path = t.path('limits.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', path, '5M']);
    const big = await platter(['resize', path, '129M']);
    expect(big.code).toBe(1);
    expect(big.stderr).toBe(
      `platter: ${path}: the block map has room for 128 blocks (128 MiB); growing a VDI image past that would move its data blocks, which is not supported\n`,
    );
    const shrink = await platter(['resize', '--shrink', path, '4M']);
    expect(shrink.code).toBe(1);
    expect(shrink.stderr).toBe(`platter: ${path}: VDI images cannot be shrunk\n`);
    const prealloc = await platter(['resize', '--preallocation=full', path, '6M']);
    expect(prealloc.code).toBe(1);
    expect(prealloc.stderr).toBe(`platter: ${path}: Unsupported preallocation mode: full\n`);
    expect(qemuInfo(path)['virtual-size']).toBe(5 * MiB);
    expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
  });
});
