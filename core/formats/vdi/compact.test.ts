/**
 * Packing VDI files: `platter compact` drops stored blocks that read as
 * zeros and moves later blocks down; discarding whole blocks does the same at
 * once. The result must compare equal to what it was (qemu-img compare),
 * check clean in qemu-img (the allocated count and the dense block numbers
 * QEMU allocates from) and be smaller.
 */
import { copyFileSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockError } from '../../image/errors.js';
import { openImage } from '../../image/open.js';
import { compact } from '../../ops/compact.js';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuIo } from '../../test/qemu.js';
import { hasTool, sh, tempDir } from '../../test/tmp.js';
import { owners, packPlan } from './compact.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const MiB = 1 << 20;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vdi-compact-')));
afterAll(() => t?.cleanup());

/** A 16 MiB image by qemu-img with blocks 0-9 written, then 2, 3, 5 and 8 zeroed in place (QEMU keeps them stored). */
function withZeroBlocks(name: string): string {
  const path = t.path(`${name}.vdi`);
  sh('qemu-img', ['create', '-q', '-f', 'vdi', path, '16M']);
  const cmds = Array.from({ length: 10 }, (_, i) => `write -P ${i + 1} ${i}M 1M`);
  qemuIo(path, [...cmds, 'write -z 2M 2M', 'write -z 5M 1M', 'write -z 8M 1M'], 'vdi');
  return path;
}

describe('vdi pack plan', () => {
  it('moves the highest blocks in use into the lowest free numbers', () => {
    // Guest blocks -> data blocks: 0->0, 1->4, 2 unallocated, 3->2, 4 discarded, 5->5.
    const entries = Uint32Array.from([0, 4, 0xffffffff, 2, 0xfffffffe, 5]);
    const owner = owners(entries, 6);
    expect([...owner]).toEqual([0, -1, 3, -1, 1, 5]);
    expect(packPlan(owner)).toEqual({
      moves: [
        { from: 5, to: 1, guest: 5 },
        { from: 4, to: 3, guest: 1 },
      ],
      used: 4,
    });
  });

  it('has nothing to do for dense or empty maps', () => {
    expect(packPlan(owners(Uint32Array.from([1, 0, 2]), 3))).toEqual({ moves: [], used: 3 });
    expect(packPlan(owners(new Uint32Array(0), 0))).toEqual({ moves: [], used: 0 });
    expect(packPlan(owners(Uint32Array.from([0xffffffff]), 2))).toEqual({ moves: [], used: 0 });
  });
});

describe.skipIf(!HAS_QEMU)('vdi compact', () => {
  it('drops zero blocks, packs the rest, and stays equal and clean', async () => {
    const path = withZeroBlocks('cli');
    const before = t.path('cli-before.vdi');
    copyFileSync(path, before);
    const r = await platter(['compact', path]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`Image compacted: ${statSync(before).size} -> ${statSync(path).size} bytes.\n`);
    expect(qemuCompare(path, before)).toBe('Images are identical.');
    expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
    // Ten blocks stored before, six after.
    expect(statSync(before).size - statSync(path).size).toBe(4 * MiB);
    // QEMU allocates its next block after the packed ones: write, then check and compare again.
    qemuIo(path, ['write -P 77 12M 4k'], 'vdi');
    qemuIo(before, ['write -P 77 12M 4k'], 'vdi');
    expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
    expect(qemuCompare(path, before)).toBe('Images are identical.');
    // Compacting again finds nothing to do.
    const again = await platter(['compact', '-q', path]);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe('');
  });

  it('reports progress to the end', async () => {
    const path = withZeroBlocks('progress');
    const seen: number[] = [];
    const r = await compact({ filename: path }, { onProgress: (p) => seen.push(p.done / p.total) });
    expect(r.after).toBeLessThan(r.before);
    expect(seen[seen.length - 1]).toBe(1);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
  });

  it('stops when cancelled while it scans, leaving the image as it was', async () => {
    const path = withZeroBlocks('cancel');
    const before = t.path('cancel-before.vdi');
    copyFileSync(path, before);
    const ac = new AbortController();
    ac.abort();
    const err = await compact({ filename: path }, { signal: ac.signal }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).kind).toBe('Cancelled');
    expect(statSync(path).size).toBe(statSync(before).size);
    expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
  });

  it('discarding whole blocks packs the file at once', async () => {
    const path = t.path('discard.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', path, '16M']);
    qemuIo(path, Array.from({ length: 8 }, (_, i) => `write -P ${i + 1} ${i}M 1M`), 'vdi');
    const img = await openImage(path, { readOnly: false });
    try {
      await img.discard(MiB, 2 * MiB);
      await img.writeZeroes(6 * MiB, MiB, true);
      // Not whole blocks: zeroed in place.
      await img.writeZeroes(4 * MiB + 100 * 512, 512, true);
      await img.flush();
    } finally {
      await img.close();
    }
    expect(statSync(path).size).toBe(0x200 + 0x200 + 5 * MiB);
    expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
    const expected = t.path('discard-expected.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', expected, '16M']);
    qemuIo(expected, [0, 3, 4, 5, 7].map((i) => `write -P ${i + 1} ${i}M 1M`).concat(['write -z 4245504 512']), 'vdi');
    expect(qemuCompare(path, expected)).toBe('Images are identical.');
  });

  it('refuses static images and formats without the capability, in one line', async () => {
    const stat = t.path('static.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', '-o', 'static=on', stat, '4M']);
    const r = await platter(['compact', stat]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`platter: ${stat}: static VDI images are fully allocated by design; only dynamic ones can be compacted\n`);
    const q = t.path('x.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', q, '4M']);
    expect((await platter(['compact', q])).stderr).toBe(`platter: ${q}: qcow2 images cannot be compacted\n`);
  });
});
