/**
 * Requests in flight together, in every writable format. The copy pipeline,
 * the app and any server issue several writes at once; a driver moves their
 * data concurrently and must serialise only requests that share a cluster or
 * block. Here many writes and zero writes land at once, sharing clusters but
 * never bytes, so the result is the same in any order: it must equal the
 * model, and qemu-img must find the image clean and equal.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../image/open.js';
import { platter } from '../test/cli.js';
import { prng } from '../test/prng.js';
import { CLEAN, problems, qemuCheck } from '../test/qemu.js';
import { hasTool, shStatus, tempDir } from '../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const SIZE = 4 << 20;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-qcow2-concurrency-')));
afterAll(() => t?.cleanup());

const CASES: { format: string; name: string; options: string; seed: number; snapshot?: boolean; noCheck?: boolean }[] = [
  { format: 'qcow2', name: '4K clusters', options: 'cluster_size=4K', seed: 1 },
  { format: 'qcow2', name: '64K clusters', options: 'cluster_size=64K', seed: 2 },
  { format: 'qcow2', name: 'extended L2 entries', options: 'cluster_size=64K,extended_l2=on', seed: 3 },
  // Every first write to a cluster copies it away from the snapshot, and L2 tables are copied too.
  { format: 'qcow2', name: 'clusters shared with a snapshot', options: 'cluster_size=4K', seed: 4, snapshot: true },
  { format: 'vdi', name: 'dynamic', options: 'static=off', seed: 5 },
  { format: 'vdi', name: 'static', options: 'static=on', seed: 6 },
  // Blocks of 2 MiB: every request here shares one; qemu-img cannot check vpc images (compare still judges).
  { format: 'vpc', name: 'dynamic', options: 'subformat=dynamic', seed: 7, noCheck: true },
  { format: 'vpc', name: 'fixed', options: 'subformat=fixed', seed: 8, noCheck: true },
  { format: 'vhdx', name: 'dynamic', options: 'block_size=1M', seed: 9 },
  { format: 'vhdx', name: 'dynamic, NOT_PRESENT blocks', options: 'block_size=1M,block_state_zero=off', seed: 10 },
  { format: 'vhdx', name: 'fixed', options: 'subformat=fixed,block_size=1M', seed: 11 },
  { format: 'vmdk', name: 'monolithicSparse', options: 'subformat=monolithicSparse', seed: 12 },
  { format: 'vmdk', name: 'monolithicSparse, zeroed grains', options: 'subformat=monolithicSparse,zeroed_grain=on', seed: 13 },
  { format: 'vmdk', name: 'monolithicFlat', options: 'subformat=monolithicFlat', seed: 14 },
];

describe.skipIf(!HAS_QEMU)('concurrent requests', () => {
  for (const c of CASES) {
    it(`${c.format}: writes and zero writes in flight together keep every byte (${c.name})`, async () => {
      const rng = prng(c.seed);
      const path = t.path(`c${c.seed}.${c.format}`);
      expect((await platter(['create', '-q', '-f', c.format, '-o', c.options, path, String(SIZE)])).code).toBe(0);
      const model = new Uint8Array(SIZE);
      if (c.snapshot) {
        // Old content, frozen in a snapshot.
        const img = await openImage(path, { readOnly: false });
        const base = rng.bytes(SIZE);
        await img.write(base, 0);
        model.set(base);
        await img.close();
        expect((await platter(['snapshot', '-c', 'old', path])).code).toBe(0);
      }
      const img = await openImage(path, { readOnly: false });
      // Pieces of 512 bytes to 20 KiB laid end to end: neighbours share clusters.
      const requests: Promise<void>[] = [];
      for (let at = 0; at < SIZE; ) {
        const len = Math.min(512 * rng.int(1, 40), SIZE - at);
        // Zeros, data, data, or left alone.
        const kind = rng.int(0, 4);
        if (kind === 0) {
          requests.push(img.writeZeroes(at, len, rng.int(0, 2) === 1));
          model.fill(0, at, at + len);
        } else if (kind < 3) {
          const data = rng.bytes(len);
          requests.push(img.write(data, at));
          model.set(data, at);
        }
        at += len;
      }
      await Promise.all(requests);
      const back = new Uint8Array(SIZE);
      await img.read(back, 0);
      await img.close();
      expect(Buffer.compare(back, model)).toBe(0);
      if (!c.noCheck) expect(problems(qemuCheck(path, c.format))).toEqual(CLEAN);
      writeFileSync(t.path('model.raw'), model);
      const cmp = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', c.format, t.path('model.raw'), path]);
      expect(cmp.stdout + cmp.stderr).toContain('Images are identical');
    });
  }
});
