/**
 * Hostile VDI images. Each test starts from one small valid image built here
 * as bytes, changes one field, and expects one clear sentence (a BlockError of
 * a stable kind; on the command line one line, exit 1) before anything is
 * allocated from the bad value: never a crash, a JavaScript error text, a hang
 * or a large allocation. Field offsets: block/vdi.c VdiHeader, VirtualBox's
 * VDIHEADER1; every field is little-endian.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockError, type ErrorKind } from '../../image/errors.js';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, tempDir } from '../../test/tmp.js';
import { Bytes } from '../../test/headers.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const MiB = 1 << 20;

/** Header fields: byte offsets. */
const H = {
  signature: 0x40, //        u32: 0xbeda107f
  version: 0x44, //          u32: 0x00010001 (1.1)
  headerSize: 0x48, //       u32: 0x180 (QEMU) or 0x190 (VirtualBox)
  imageType: 0x4c, //        u32: 1 dynamic, 2 static
  offsetBmap: 0x154, //      u32: block map, sector aligned
  offsetData: 0x158, //      u32: data blocks, sector aligned
  sectorSize: 0x168, //      u32: 512
  diskSize: 0x170, //        u64: guest bytes
  blockSize: 0x178, //       u32: 1 MiB
  blockExtra: 0x17c, //      u32: 0
  blocksInImage: 0x180, //   u32
  blocksAllocated: 0x184, // u32
  uuidLink: 0x1a8, //        16 bytes: parent image (must be null)
  uuidParent: 0x1b8, //      16 bytes: parent's modification (must be null)
} as const;

/** The base image: 4 MiB guest; block 0 -> data block 0 (0x11s), block 2 -> data block 1 (0x22s), 1 never written, 3 discarded. */
const MAP = [0, 0xffffffff, 1, 0xfffffffe];
function baseImage(): Bytes {
  const b = new Bytes(0x400 + 2 * MiB)
    .ascii(0, '<<< QEMU VM Virtual Disk Image >>>\n') // text[0x40]
    .u32le(H.signature, 0xbeda107f)
    .u32le(H.version, 0x00010001)
    .u32le(H.headerSize, 0x180)
    .u32le(H.imageType, 1) //                  dynamic
    .u32le(H.offsetBmap, 0x200) //             right after the header sector
    .u32le(H.offsetData, 0x400) //             after one sector of map
    .u32le(H.sectorSize, 512)
    .u64le(H.diskSize, 4 * MiB)
    .u32le(H.blockSize, MiB)
    .u32le(H.blockExtra, 0)
    .u32le(H.blocksInImage, 4)
    .u32le(H.blocksAllocated, 2)
    .fill(0x188, 16, 0x42) //                  uuid_image (any)
    .fill(0x198, 16, 0x43) //                  uuid_last_snap: modification (any)
    .fill(0x200, 512, 0xff); //                map sector: unused entries unallocated
  MAP.forEach((e, i) => b.u32le(0x200 + i * 4, e));
  b.fill(0x400, MiB, 0x11).fill(0x400 + MiB, MiB, 0x22);
  return b;
}

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vdi-hostile-')));
afterAll(() => t.cleanup());

/** Writes the base image with `change` applied, returning its path. */
function imageWith(name: string, change: (b: Bytes) => void, length?: number): string {
  const b = baseImage();
  change(b);
  const path = t.path(`${name}.vdi`);
  writeFileSync(path, length === undefined ? b.buf : b.buf.subarray(0, length));
  return path;
}

/** Messages that are JavaScript leaking through instead of a sentence about the image. */
const RAW_JS_TEXT = /DataView|typed array|out of range|outside the bounds|Invalid array length|Cannot read prop|undefined|NaN|RangeError|TypeError/;

async function openError(path: string): Promise<BlockError> {
  const heapBefore = process.memoryUsage().arrayBuffers;
  const started = Date.now();
  const err = await openImage(path, { format: 'vdi' }).then(
    async (img) => {
      await img.close();
      return undefined;
    },
    (e: unknown) => e,
  );
  expect(Date.now() - started).toBeLessThan(2000);
  // Nothing large was allocated from the hostile value.
  expect(process.memoryUsage().arrayBuffers - heapBefore).toBeLessThan(64 * MiB);
  expect(err).toBeInstanceOf(BlockError);
  return err as BlockError;
}

describe('vdi: the base image', () => {
  it('opens and reads what it holds', async () => {
    const img = await openImage(imageWith('base', () => undefined), { format: 'vdi' });
    try {
      const buf = new Uint8Array(4 * MiB);
      await img.read(buf, 0);
      expect([buf[0], buf[MiB - 1], buf[MiB], buf[2 * MiB], buf[3 * MiB]]).toEqual([0x11, 0x11, 0, 0x22, 0]);
    } finally {
      await img.close();
    }
  });

  it.skipIf(!HAS_QEMU)('is clean for qemu-img check', () => {
    expect(problems(qemuCheck(t.path('base.vdi'), 'vdi'))).toEqual(CLEAN);
  });
});

describe('vdi: one field changed is refused with one sentence', () => {
  const cases: { name: string; change: (b: Bytes) => void; kind: ErrorKind; message: RegExp; length?: number }[] = [
    { name: 'bad-signature', change: (b) => b.u32le(H.signature, 0xbeda1070), kind: 'InvalidFormat', message: /bad signature beda1070/ },
    { name: 'version-1.2', change: (b) => b.u32le(H.version, 0x00010002), kind: 'Unsupported', message: /version 1\.2/ },
    { name: 'version-0', change: (b) => b.u32le(H.version, 0), kind: 'Unsupported', message: /version 0\.0/ },
    { name: 'header-size', change: (b) => b.u32le(H.headerSize, 0x100), kind: 'Unsupported', message: /header size 0x100/ },
    { name: 'image-type-3', change: (b) => b.u32le(H.imageType, 3), kind: 'Unsupported', message: /image type 3/ },
    { name: 'image-type-0', change: (b) => b.u32le(H.imageType, 0), kind: 'Unsupported', message: /image type 0/ },
    { name: 'sector-size', change: (b) => b.u32le(H.sectorSize, 4096), kind: 'Unsupported', message: /sector size 4096 is not 512/ },
    { name: 'block-size-2m', change: (b) => b.u32le(H.blockSize, 2 * MiB), kind: 'Unsupported', message: /block size 2097152 is not 1048576/ },
    { name: 'block-size-0', change: (b) => b.u32le(H.blockSize, 0), kind: 'Unsupported', message: /block size 0 is not/ },
    { name: 'block-extra', change: (b) => b.u32le(H.blockExtra, 8), kind: 'Unsupported', message: /block extra/ },
    {
      name: 'blocks-too-few',
      change: (b) => b.u32le(H.blocksInImage, 3),
      kind: 'Unsupported',
      message: /disk size 4194304, image bitmap has room for 3145728/,
    },
    { name: 'blocks-over-max', change: (b) => b.u32le(H.blocksInImage, 0x1fffff81), kind: 'Unsupported', message: /too many blocks 536870785, max is 536870784/ },
    // The largest legal count, in a small file: its 2 GiB map cannot be there, so nothing is read or allocated.
    { name: 'blocks-max', change: (b) => b.u32le(H.blocksInImage, 0x1fffff80), kind: 'Corrupt', message: /block map .* beyond the end of the file/ },
    { name: 'blocks-ffffffff', change: (b) => b.u32le(H.blocksInImage, 0xffffffff), kind: 'Unsupported', message: /too many blocks/ },
    {
      name: 'disk-size-over-max',
      change: (b) => b.u64le(H.diskSize, 0x1fffff80 * MiB + 512).u32le(H.blocksInImage, 0x1fffff81),
      kind: 'Unsupported',
      message: /Unsupported VDI image size \(size is 0x1fffff8000200, max supported is 0x1fffff8000000\)/,
    },
    { name: 'disk-size-u64-max', change: (b) => b.u64le(H.diskSize, 0xffffffffffffffffn), kind: 'Unsupported', message: /Unsupported VDI image size/ },
    { name: 'bmap-unaligned', change: (b) => b.u32le(H.offsetBmap, 0x201), kind: 'Unsupported', message: /unaligned block map offset 0x201/ },
    { name: 'data-unaligned', change: (b) => b.u32le(H.offsetData, 0x401), kind: 'Unsupported', message: /unaligned data offset 0x401/ },
    { name: 'bmap-beyond-file', change: (b) => b.u32le(H.offsetBmap, 0x10000000), kind: 'Corrupt', message: /beyond the end of the file/ },
    { name: 'bmap-in-header', change: (b) => b.u32le(H.offsetBmap, 0), kind: 'Corrupt', message: /overlaps the header/ },
    { name: 'data-beyond-file', change: (b) => b.u32le(H.offsetData, 0x10000000), kind: 'Corrupt', message: /data offset 0x10000000 is beyond the end of the file/ },
    { name: 'data-in-map', change: (b) => b.u32le(H.offsetData, 0x200), kind: 'Corrupt', message: /inside the block map/ },
    { name: 'link-uuid', change: (b) => b.fill(H.uuidLink, 16, 1), kind: 'Unsupported', message: /non-NULL link UUID/ },
    { name: 'parent-uuid', change: (b) => b.fill(H.uuidParent, 16, 1), kind: 'Unsupported', message: /non-NULL parent UUID/ },
    { name: 'short-file', change: () => undefined, kind: 'InvalidFormat', message: /shorter than its header/, length: 300 },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const path = imageWith(c.name, c.change, c.length);
      const err = await openError(path);
      expect(err.kind).toBe(c.kind);
      expect(err.message).toMatch(c.message);
      expect(err.message).not.toMatch(RAW_JS_TEXT);
      // On the command line: one line naming the file, exit 1.
      const r = await platter(['info', '-f', 'vdi', path]);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`platter: ${path}: ${err.message}\n`);
    });
  }
});

describe('vdi: hostile values that open, then fail where they are used', () => {
  it('a map entry beyond blocks-in-image errors on read of that block only', async () => {
    const path = imageWith('entry-beyond', (b) => b.u32le(0x200 + 2 * 4, 7));
    const img = await openImage(path, { format: 'vdi' });
    try {
      const buf = new Uint8Array(MiB);
      await img.read(buf, 0);
      expect(buf[0]).toBe(0x11);
      const err = await img.read(buf, 2 * MiB).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(BlockError);
      expect((err as BlockError).kind).toBe('Corrupt');
      expect((err as BlockError).message).toMatch(/block map entry 2 points to block 7, beyond the 4 blocks/);
      // Block status and map say so too, rather than looping or crashing.
      await expect(img.blockStatus(2 * MiB, MiB)).rejects.toThrow(/beyond the 4 blocks/);
    } finally {
      await img.close();
    }
  });

  it('an allocated count past the map refuses to allocate, and writes nothing', async () => {
    const path = imageWith('count-huge', (b) => b.u32le(H.blocksAllocated, 0xffffffff));
    const img = await openImage(path, { format: 'vdi', readOnly: false });
    try {
      await expect(img.write(new Uint8Array(512).fill(9), MiB)).rejects.toThrow(/no room for a new block/);
      // Allocated blocks stay writable.
      await img.write(new Uint8Array(512).fill(9), 0);
    } finally {
      await img.close();
    }
  });

  it('an odd disk size (VBoxManage convertfromraw) rounds up to a sector, as in QEMU', async () => {
    const img = await openImage(imageWith('odd-size', (b) => b.u64le(H.diskSize, 4 * MiB - 700)), { format: 'vdi' });
    expect(img.size).toBe(4 * MiB - 512);
    await img.close();
  });

  it("VirtualBox's 0x190 header opens", async () => {
    const img = await openImage(imageWith('vbox-header', (b) => b.u32le(H.headerSize, 0x190)), { format: 'vdi' });
    expect(img.size).toBe(4 * MiB);
    await img.close();
  });
});
