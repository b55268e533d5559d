/**
 * Writes into blocks another tool made: Platter reads a dynamic block whole
 * (as QEMU does, whatever its bitmap says), but Virtual PC and Hyper-V read
 * sectors whose bit is clear as zeros, so a write sets the bits of the
 * sectors it wrote, and only those.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { hasTool, sh, tempDir } from '../../test/tmp.js';
import { vhdFixture } from './fixture.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const KiB = 1024;
const BLOCK = 64 * KiB;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vpc-image-')));
afterAll(() => t?.cleanup());

describe('vpc: sector bitmaps of dynamic images', () => {
  it('a clear bit still reads the block data (as QEMU reads it); writing sets the written sectors\' bits only', async () => {
    // Block 0 stored at the first data place, its sectors 8..23 clear.
    const bitmap = new Uint8Array(512).fill(0xff);
    bitmap[1] = 0;
    bitmap[2] = 0;
    const b = vhdFixture({ size: 2 * BLOCK, blockSize: BLOCK, blocks: [{ index: 0, fill: 0x44, bitmap }] });
    const path = t.path('bits.vhd');
    writeFileSync(path, b.buf);
    const bitmapAt = 2048;

    const img = await openImage(path, { format: 'vpc', readOnly: false });
    const buf = new Uint8Array(BLOCK);
    await img.read(buf, 0);
    expect(buf.every((x) => x === 0x44)).toBe(true);
    // Sectors 9 and 10.
    await img.write(new Uint8Array(1024).fill(0x55), 9 * 512);
    await img.close();

    const bits = readFileSync(path).subarray(bitmapAt, bitmapAt + 512);
    expect([bits[0], bits[1], bits[2], bits[3]]).toEqual([0xff, 0b0110_0000, 0, 0xff]);
    expect(bits.subarray(3).every((x) => x === 0xff)).toBe(true);
  });

  it.skipIf(!HAS_QEMU)('an image of 64 KiB blocks, one with clear bits, reads the same in qemu-img and Platter', async () => {
    const bitmap = new Uint8Array(512).fill(0xff);
    bitmap[0] = 0x0f;
    const path = t.path('small-blocks.vhd');
    writeFileSync(
      path,
      vhdFixture({
        size: 6 * BLOCK,
        blockSize: BLOCK,
        blocks: [
          { index: 4, fill: 0x61, bitmap },
          { index: 1, fill: 0x62 },
        ],
      }).buf,
    );
    const raw = t.path('small-blocks.raw');
    sh('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', path, raw]);
    const img = await openImage(path, { format: 'vpc' });
    const mine = new Uint8Array(img.size);
    await img.read(mine, 0);
    await img.close();
    expect(mine.length).toBe(6 * BLOCK);
    expect(Buffer.compare(mine, readFileSync(raw))).toBe(0);
    expect([mine[BLOCK], mine[4 * BLOCK], mine[2 * BLOCK]]).toEqual([0x62, 0x61, 0]);
  });
});
