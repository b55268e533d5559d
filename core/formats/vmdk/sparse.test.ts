/**
 * The hosted sparse extent (no peer tool needed): its allocation under
 * concurrent writes, and the streamOptimized layout byte by byte.
 */
import { readFileSync, statSync } from 'node:fs';
import { inflateSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createImage, openImage } from '../../image/open.js';
import { findDriver } from '../../image/registry.js';
import { resolveOptions } from '../../options/schema.js';
import { prng } from '../../test/prng.js';
import { tempDir } from '../../test/tmp.js';
import { H } from './sparse-test-helpers.js';

const KiB = 1024;
let t: ReturnType<typeof tempDir>;
beforeEach(() => (t = tempDir('platter-vmdk-sparse-')));
afterEach(() => t.cleanup());

async function newSparse(path: string, size: number, options: Record<string, string> = {}): Promise<void> {
  const vmdk = findDriver('vmdk');
  const created = await createImage(path, vmdk, size, resolveOptions(vmdk.createOptions!, options, 'vmdk'));
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

/**
 * What VMware's "Virtual Disk Format 5.0" and QEMU's block/vmdk.c
 * (vmdk_open_vmdk4) expect of a stream: a version 3 header with compressed
 * grains behind markers and gdOffset = GD_AT_END; then grains (marker: lba,
 * size, deflate data), each grain table after a marker, the directory after
 * its marker, and, in the last three sectors, the footer marker, the footer
 * (the header again, naming the directory) and the end-of-stream marker.
 */
describe('streamOptimized layout', () => {
  const GD_AT_END = 2n ** 64n - 1n;
  const FLAG_COMPRESSED = 1 << 16;
  const FLAG_MARKERS = 1 << 17;
  /** Marker types (block/vmdk.c MARKER_*). */
  const EOS = 0;
  const GT = 1;
  const GD = 2;
  const FOOTER = 3;

  it('a written stream: header, markers, tables, footer and end-of-stream marker where they belong', async () => {
    const path = t.path('stream.vmdk');
    const grain = 64 * KiB;
    await newSparse(path, 4 << 20, { subformat: 'streamOptimized' });
    // Grains 0 and 33 (in order: a stream is written once, front to back), the rest left empty.
    const written = new Map([
      [0, prng(1).bytes(grain)],
      [33, new Uint8Array(grain).fill(0x5c)],
    ]);
    const img = await openImage(path, { readOnly: false });
    try {
      for (const [g, data] of written) await img.write(data, g * grain);
    } finally {
      await img.close();
    }

    const f = readFileSync(path);
    expect(f.length % 512).toBe(0);
    const sectors = f.length / 512;
    const sector = (n: number) => f.subarray(n * 512, (n + 1) * 512);
    /** A metadata marker: {val u64 (sectors that follow), size u32 (0), type u32}. */
    const marker = (n: number) => ({
      val: f.readBigUInt64LE(n * 512),
      size: f.readUInt32LE(n * 512 + 8),
      type: f.readUInt32LE(n * 512 + 12),
    });

    expect(f.toString('latin1', H.magic, 4)).toBe('KDMV');
    expect(f.readUInt32LE(H.version)).toBe(3);
    expect(f.readUInt32LE(H.flags) & (FLAG_COMPRESSED | FLAG_MARKERS)).toBe(FLAG_COMPRESSED | FLAG_MARKERS);
    expect(f.readUInt16LE(H.compressAlgorithm)).toBe(1); // deflate
    expect(f.readBigUInt64LE(H.gdOffset)).toBe(GD_AT_END);

    // The end: footer marker (one sector of metadata follows), footer, end-of-stream marker (a zero sector).
    expect(marker(sectors - 3)).toEqual({ val: 1n, size: 0, type: FOOTER });
    expect(marker(sectors - 1)).toEqual({ val: 0n, size: 0, type: EOS });
    expect(sector(sectors - 1).every((b) => b === 0)).toBe(true);
    const footer = Buffer.from(sector(sectors - 2));
    const gd = Number(footer.readBigUInt64LE(H.gdOffset));
    expect(gd).toBeLessThan(sectors - 3);
    footer.writeBigUInt64LE(GD_AT_END, H.gdOffset);
    expect(footer.equals(sector(0)), 'the footer is the header but for gdOffset').toBe(true);

    // 4 MiB of guest fits one table (512 grains of 64 KiB): a directory of one entry (one sector), a table of four.
    expect(marker(gd - 1)).toEqual({ val: 1n, size: 0, type: GD });
    const gt = f.readUInt32LE(gd * 512);
    expect(marker(gt - 1)).toEqual({ val: 4n, size: 0, type: GT });
    expect(f.subarray(gd * 512 + 4, (gd + 1) * 512).every((b) => b === 0)).toBe(true);
    for (let g = 0; g < 512; g++) {
      const at = f.readUInt32LE(gt * 512 + g * 4);
      const data = written.get(g);
      if (!data) {
        expect(at, `grain ${g}`).toBe(0);
        continue;
      }
      expect(f.readBigUInt64LE(at * 512), 'grain marker lba').toBe(BigInt((g * grain) / 512));
      const size = f.readUInt32LE(at * 512 + 8);
      expect(Buffer.compare(inflateSync(f.subarray(at * 512 + 12, at * 512 + 12 + size)), data)).toBe(0);
    }
  });
});
