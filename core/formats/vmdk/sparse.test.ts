/** The hosted sparse extent's allocation, under concurrent writes (no peer tool needed). */
import { readFileSync, statSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createImage, openImage } from '../../image/open.js';
import { findDriver } from '../../image/registry.js';
import { resolveOptions } from '../../options/schema.js';
import { tempDir } from '../../test/tmp.js';

const KiB = 1024;
let t: ReturnType<typeof tempDir>;
beforeEach(() => (t = tempDir('platter-vmdk-sparse-')));
afterEach(() => t.cleanup());

async function newSparse(path: string, size: number): Promise<void> {
  const vmdk = findDriver('vmdk');
  const created = await createImage(path, vmdk, size, resolveOptions(vmdk.createOptions!, {}, 'vmdk'));
  await created.commit();
}

describe('sparse extent allocation', () => {
  it('concurrent writes into the same grains allocate each grain once', async () => {
    const path = t.path('a.vmdk');
    await newSparse(path, 4 << 20);
    const emptySize = statSync(path).size;
    const img = await openImage(path, { readOnly: false });
    const expected = new Uint8Array(256 * KiB);
    try {
      // 64 writes of 4 KiB, all at once, into 4 grains of 64 KiB, in a scrambled order.
      const writes = Array.from({ length: 64 }, (_, i) => (i * 37) % 64).map((block) => {
        const data = new Uint8Array(4 * KiB).fill(block + 1);
        expected.set(data, block * 4 * KiB);
        return img.write(data, block * 4 * KiB);
      });
      await Promise.all(writes);
      const back = new Uint8Array(256 * KiB);
      await img.read(back, 0);
      expect(Buffer.compare(back, expected)).toBe(0);
    } finally {
      await img.close();
    }
    expect(statSync(path).size - emptySize).toBe(256 * KiB);
    // The grains sit one after another, each grain table entry pointing at its own.
    const reopened = await openImage(path);
    try {
      const seen = new Set<number>();
      for (let g = 0; g < 4; g++) {
        const st = await reopened.blockStatus(g * 64 * KiB, 64 * KiB);
        expect(st.data).toBe(true);
        seen.add(st.hostOffset!);
      }
      expect(seen.size).toBe(4);
    } finally {
      await reopened.close();
    }
    expect(readFileSync(path).subarray(0, 4).toString('latin1')).toBe('KDMV');
  });
});
