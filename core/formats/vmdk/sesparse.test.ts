/**
 * seSparse extents: images built here field by field (no tool here writes the
 * format), read back through Platter and through qemu-img (via a small
 * descriptor), and hostile variants with one field changed.
 *
 * Layout: QEMU's block/vmdk.c (VMDKSESparseConstHeader,
 * VMDKSESparseVolatileHeader, get_cluster_offset); all fields little-endian u64.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { Bytes } from '../../test/headers.js';
import { readGuestBytes } from '../../test/images.js';
import { prng } from '../../test/prng.js';
import { hasTool, tempDir } from '../../test/tmp.js';
import { expectRefused, openExtent, qemuRead, qemuRefuses, oneExtentDescriptor, openAndReadAll, readAll, statusRuns } from './legacy-test-helpers.js';
import { openSeSparseExtent } from './sesparse.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');

const SECTOR = 512;
const GRAIN = 4096; // 8 sectors, the only grain size
const TABLE_ENTRIES = 4096; // 64 sectors of 64-bit entries
const TABLE_SECTORS = 64;
const TABLE_COVERS = TABLE_ENTRIES * GRAIN; // 16 MiB of guest per table

/** Grain-table entry types (top nibble). */
const UNMAPPED = 1n;
const ZERO = 2n;
const ALLOCATED = 3n;

interface SeSparseSpec {
  /** Guest size in sectors. */
  sectors: number;
  /** Guest grain indices stored, in their order in the grains area. */
  grains: number[];
  /** Guest grains that read as zeros, and the entry type saying so. */
  zeros?: Array<[number, bigint]>;
  /** Directory entries' table indices, in their order in the tables area (default: directory order). */
  tableOrder?: number[];
}

/** Where the builder put things, for the hostile tests to change. */
interface SeSparseLayout {
  gdSector: number;
  tablesSector: number;
  grainsSector: number;
  /** Sector of the table of each directory entry that has one. */
  tableSector: Map<number, number>;
}

/** The bytes grain `g` holds (deterministic, different per grain). */
const grainData = (g: number) => prng(2000 + g).bytes(GRAIN);

/** A type-3 (allocated) entry: the grain index with its low 12 bits in bits 48-59, the rest in bits 0-47. */
const allocatedEntry = (index: number) =>
  (ALLOCATED << 60n) | ((BigInt(index) & 0xfffn) << 48n) | (BigInt(index) >> 12n);

/**
 * A seSparse file: const header (sector 0), volatile header (1), journal
 * header (2) and journal (3-10), grain directory, grain tables, free bitmap,
 * backmap, grains. QEMU reads only the headers, the directory, the tables and
 * the grains; the other areas are sized plausibly and left empty.
 */
function seSparseImage(spec: SeSparseSpec): { file: Uint8Array; guest: Uint8Array; layout: SeSparseLayout } {
  const gdEntries = Math.ceil((spec.sectors * SECTOR) / TABLE_COVERS);
  const gdSectors = Math.ceil((gdEntries * 8) / SECTOR);
  const byTable = (g: number) => Math.floor(g / TABLE_ENTRIES);
  const used = [...new Set([...spec.grains, ...(spec.zeros ?? []).map(([g]) => g)].map(byTable))].sort((a, b) => a - b);
  const tableOrder = spec.tableOrder ?? used;

  const gdSector = 11;
  const tablesSector = gdSector + gdSectors;
  const tablesSectors = gdEntries * TABLE_SECTORS; // room for a table per directory entry
  const bitmapSector = tablesSector + tablesSectors;
  const bitmapSectors = 1;
  const backmapSector = bitmapSector + bitmapSectors;
  const backmapSectors = 1;
  const grainsSector = backmapSector + backmapSectors;
  const end = grainsSector + spec.grains.length * (GRAIN / SECTOR);

  const b = new Bytes(end * SECTOR);
  b.u64le(0, 0xcafebaben) //                  magic of the const header
    .u64le(8, 0x0000_0002_0000_0001n) //     version 2.1
    .u64le(16, spec.sectors) //              capacity in sectors
    .u64le(24, 8) //                         grain size: 8 sectors
    .u64le(32, TABLE_SECTORS) //             grain table size: 64 sectors
    .u64le(40, 0) //                         flags: none
    // 48-79: reserved1..4, zero
    .u64le(80, 1) //                         volatile header: sector 1
    .u64le(88, 1) //                         ... one sector
    .u64le(96, 2) //                         journal header: sector 2
    .u64le(104, 1) //                        ... one sector
    .u64le(112, 3) //                        journal: sectors 3-10
    .u64le(120, 8) //                        ... 8 sectors
    .u64le(128, gdSector) //                 grain directory
    .u64le(136, gdSectors) //                ... its size in sectors
    .u64le(144, tablesSector) //             grain tables area
    .u64le(152, tablesSectors) //            ... its size in sectors
    .u64le(160, bitmapSector) //             free bitmap
    .u64le(168, bitmapSectors) //            ... its size in sectors
    .u64le(176, backmapSector) //            backmap
    .u64le(184, backmapSectors) //           ... its size in sectors
    .u64le(192, grainsSector) //             grains area
    .u64le(200, spec.grains.length * 8); //  ... its size in sectors
  // 208-511: padding, zero
  b.u64le(SECTOR, 0xcafecafen) //            magic of the volatile header
    .u64le(SECTOR + 8, used.length) //       free_gt_number: the next table index to use
    .u64le(SECTOR + 16, 1) //                next transaction number
    .u64le(SECTOR + 24, 0); //               replay journal: no, the image is clean
  // the rest of the volatile header: padding, zero

  const tableSector = new Map<number, number>();
  tableOrder.forEach((t, i) => {
    b.u64le(gdSector * SECTOR + t * 8, (0x1000_0000n << 32n) | BigInt(i)); // allocated, table index i
    tableSector.set(t, tablesSector + i * TABLE_SECTORS);
  });
  const entryAt = (g: number) => tableSector.get(byTable(g))! * SECTOR + (g % TABLE_ENTRIES) * 8;
  const guest = new Uint8Array(spec.sectors * SECTOR);
  spec.grains.forEach((g, i) => {
    b.u64le(entryAt(g), allocatedEntry(i));
    const data = grainData(g);
    b.put((grainsSector + i * 8) * SECTOR, data);
    guest.set(data.subarray(0, Math.min(GRAIN, guest.length - g * GRAIN)), g * GRAIN);
  });
  for (const [g, type] of spec.zeros ?? []) b.u64le(entryAt(g), type << 60n);
  return { file: b.buf, guest, layout: { gdSector, tablesSector, grainsSector, tableSector } };
}

/**
 * The main test image: 40 MiB and 1 KiB (three tables, the last grain
 * partial), the middle table absent, the tables stored in the other order,
 * grains contiguous and out of order, zero grains of both types. More than
 * 4096 grains are stored, so grain indices use the rotated high bits, and one
 * contiguous run crosses from index 4095 to 4096.
 */
const range = (from: number, count: number) => Array.from({ length: count }, (_, i) => from + i);
const MAIN: SeSparseSpec = {
  sectors: 81922,
  grains: [...range(10, 4085), ...range(8300, 100), 0, 1, 2, 5, 4, 4095, 8192, 9000, 10240],
  zeros: [
    [3, ZERO],
    [6, UNMAPPED],
    [8193, ZERO],
  ],
  tableOrder: [2, 0],
};

let t: ReturnType<typeof tempDir>;
beforeAll(() => {
  t = tempDir('platter-sesparse-');
});
afterAll(() => t.cleanup());

/** A descriptor naming one seSparse extent, so qemu-img opens it. */
function descriptor(name: string, extent: string, sectors: number): string {
  return t.write(name, oneExtentDescriptor('seSparse', 'SESPARSE', extent, sectors));
}

const openSe = (path: string, length: number) => openExtent(path, (f) => openSeSparseExtent(f, length));

describe('seSparse extents', () => {
  it('read back the grains written, zeros elsewhere', async () => {
    const { file, guest } = seSparseImage(MAIN);
    const extent = await openSe(t.write('main-sesparse.vmdk', file), MAIN.sectors * SECTOR);
    try {
      expect(extent.length).toBe(MAIN.sectors * SECTOR);
      expect(Buffer.from(await readAll(extent)).equals(Buffer.from(guest))).toBe(true);
      for (const [offset, length] of [
        [1000, 9000],
        [4095 * GRAIN - 7, GRAIN + 300],
        [8192 * GRAIN - 100, 3 * GRAIN],
        [guest.length - 2000, 2000],
      ]) {
        const buf = new Uint8Array(length).fill(0xee);
        await extent.read(buf, offset);
        expect(Buffer.from(buf).equals(guest.subarray(offset, offset + length)), `at ${offset}`).toBe(true);
      }
    } finally {
      await extent.close();
    }
  });

  it('reports runs: data with host offsets, zero for types 1 and 2, unallocated (from the parent) for 0', async () => {
    const { file, layout } = seSparseImage(MAIN);
    const extent = await openSe(t.write('runs-sesparse.vmdk', file), MAIN.sectors * SECTOR);
    const host = (g: number) => (layout.grainsSector + MAIN.grains.indexOf(g) * 8) * SECTOR;
    try {
      expect(await statusRuns(extent)).toEqual([
        { offset: 0, length: 3 * GRAIN, state: 'data', hostOffset: host(0) },
        { offset: 3 * GRAIN, length: GRAIN, state: 'zero' }, // type 2
        { offset: 4 * GRAIN, length: GRAIN, state: 'data', hostOffset: host(4) }, // 4 and 5 stored in reverse
        { offset: 5 * GRAIN, length: GRAIN, state: 'data', hostOffset: host(5) },
        { offset: 6 * GRAIN, length: GRAIN, state: 'zero' }, // type 1, SCSI-unmapped
        { offset: 7 * GRAIN, length: 3 * GRAIN, state: 'unallocated' },
        { offset: 10 * GRAIN, length: 4085 * GRAIN, state: 'data', hostOffset: host(10) },
        { offset: 4095 * GRAIN, length: GRAIN, state: 'data', hostOffset: host(4095) },
        { offset: 4096 * GRAIN, length: 4096 * GRAIN, state: 'unallocated' }, // no table
        { offset: 8192 * GRAIN, length: GRAIN, state: 'data', hostOffset: host(8192) },
        { offset: 8193 * GRAIN, length: GRAIN, state: 'zero' },
        { offset: 8194 * GRAIN, length: 106 * GRAIN, state: 'unallocated' },
        { offset: 8300 * GRAIN, length: 100 * GRAIN, state: 'data', hostOffset: host(8300) }, // indices 4085-4184
        { offset: 8400 * GRAIN, length: 600 * GRAIN, state: 'unallocated' },
        { offset: 9000 * GRAIN, length: GRAIN, state: 'data', hostOffset: host(9000) },
        { offset: 9001 * GRAIN, length: 1239 * GRAIN, state: 'unallocated' },
        { offset: 10240 * GRAIN, length: 2 * SECTOR, state: 'data', hostOffset: host(10240) }, // the partial last grain
      ]);
    } finally {
      await extent.close();
    }
  });

  it.skipIf(!HAS_QEMU)('reads as qemu-img reads it through a seSparse descriptor', async () => {
    const { file, guest } = seSparseImage(MAIN);
    const path = t.write('x-sesparse.vmdk', file);
    const desc = descriptor('x.vmdk', 'x-sesparse.vmdk', MAIN.sectors);
    const extent = await openSe(path, MAIN.sectors * SECTOR);
    try {
      const ours = await readAll(extent);
      expect(Buffer.from(ours).equals(Buffer.from(guest))).toBe(true);
      expect(Buffer.from(qemuRead(desc, t.path('x.raw'))).equals(Buffer.from(ours))).toBe(true);
      // The whole image, descriptor and all, through the driver (read-only: these extents are never written).
      expect(Buffer.from(await readGuestBytes(desc, 'vmdk')).equals(Buffer.from(ours))).toBe(true);
      await expect(openImage(desc, { readOnly: false })).rejects.toThrow(/can only be read/);
    } finally {
      await extent.close();
    }
  });
});

/** The main image with `patch` applied; the path of the result, and of a descriptor naming it. */
function hostile(name: string, patch: (b: Bytes, l: SeSparseLayout) => unknown): { path: string; desc: string } {
  const { file, layout } = seSparseImage(MAIN);
  const b = new Bytes(file.length).put(0, file);
  patch(b, layout);
  const extent = `hostile-${name}-sesparse.vmdk`;
  return { path: t.write(extent, b.buf), desc: descriptor(`hostile-${name}.vmdk`, extent, MAIN.sectors) };
}

/** Opens `path` as an extent of `length` bytes and reads all of it, 1 MiB at a time. */
async function openAndRead(path: string, length = MAIN.sectors * SECTOR): Promise<void> {
  return openAndReadAll(() => openSe(path, length));
}

type Patch = (b: Bytes, l: SeSparseLayout) => unknown;
/** The table entry of guest grain `g` in the main image. */
const entryOf = (l: SeSparseLayout, g: number) =>
  l.tableSector.get(Math.floor(g / TABLE_ENTRIES))! * SECTOR + (g % TABLE_ENTRIES) * 8;

describe('hostile seSparse extents (one field changed each) are refused with one sentence', () => {
  /**
   * name, change, kind, message, and whether qemu-img refuses it too (on open
   * or on the first read); where it does not, a comment says why.
   */
  const onOpen: Array<[string, Patch, 'InvalidFormat' | 'Unsupported' | 'Corrupt', RegExp, boolean]> = [
    [
      'bad magic',
      (b) => b.u64le(0, 0xcafebabfn),
      'InvalidFormat',
      /not a seSparse extent: const header magic 0x0+cafebabf/,
      true,
    ],
    [
      'version 2.2',
      (b) => b.u64le(8, 0x0000_0002_0000_0002n),
      'Unsupported',
      /version 0x0000000200000002 is not supported/,
      true,
    ],
    ['grain size 16', (b) => b.u64le(24, 16), 'Unsupported', /grains of 16 sectors are not supported/, true],
    [
      'grain table size 128',
      (b) => b.u64le(32, 128),
      'Unsupported',
      /grain tables of 128 sectors are not supported/,
      true,
    ],
    ['unknown flags', (b) => b.u64le(40, 1), 'Unsupported', /unknown seSparse flags 0x0+1$/, true],
    ['reserved field', (b) => b.u64le(64, 7), 'Unsupported', /reserved const header field 3 is 0x0+7, not zero/, true],
    ['const header padding', (b) => b.u8(511, 1), 'Unsupported', /const header padding is not zero/, true],
    [
      'huge capacity',
      (b) => b.u64le(16, 1n << 60n),
      'Corrupt',
      /capacity of 1152921504606846976 sectors is over 64 TiB/,
      true,
    ],
    // QEMU takes the header's capacity and ignores the descriptor's count; Platter wants both to agree.
    [
      'capacity not the descriptor length',
      (b) => b.u64le(16, MAIN.sectors - 8),
      'Corrupt',
      /descriptor gives 81922 sectors but .* 81914/,
      false,
    ],
    [
      'volatile header beyond the file',
      (b) => b.u64le(80, 1n << 40n),
      'Corrupt',
      /volatile header at sector 1099511627776 lies beyond the end/,
      true,
    ],
    [
      'volatile header on the const header',
      (b) => b.u64le(80, 0),
      'Corrupt',
      /volatile header at sector 0 overlaps the const header/,
      true,
    ],
    [
      'bad volatile magic',
      (b) => b.u64le(SECTOR, 0xcafecaffn),
      'Corrupt',
      /bad volatile header magic 0x0+cafecaff/,
      true,
    ],
    ['journal to replay', (b) => b.u64le(SECTOR + 24, 1), 'Unsupported', /dirty: its journal needs replaying/, true],
    [
      'volatile header padding',
      (b) => b.u8(2 * SECTOR - 1, 1),
      'Unsupported',
      /volatile header padding is not zero/,
      true,
    ],
    [
      'huge grain directory',
      (b) => b.u64le(136, 1n << 40n),
      'Corrupt',
      /grain directory of 1099511627776 sectors is too big/,
      true,
    ],
    // QEMU opens it and fails the first read past the directory's end.
    [
      'directory too small for the disk',
      (b) => b.u64le(136, 0),
      'Corrupt',
      /directory of 0 entries does not cover the disk's 81922/,
      true,
    ],
    // QEMU reads past the end of the file as zeros: an empty directory, so a disk of zeros.
    [
      'directory beyond the file',
      (b) => b.u64le(128, 1n << 30n),
      'Corrupt',
      /grain directory at sector 1073741824 lies beyond the end/,
      false,
    ],
    [
      'directory on the const header',
      (b) => b.u64le(128, 0),
      'Corrupt',
      /grain directory at sector 0 overlaps the const header/,
      true,
    ],
  ];
  for (const [name, patch, kind, message, qemuToo] of onOpen) {
    it(`on open: ${name}`, async () => {
      const { path, desc } = hostile(name.replaceAll(' ', '-'), patch);
      await expectRefused(() => openAndRead(path), path, kind, message);
      if (HAS_QEMU) expect(qemuRefuses(desc, t.path('out.raw')), 'qemu-img refuses too').toBe(qemuToo);
    });
  }

  const onRead: Array<[string, Patch, RegExp, boolean]> = [
    [
      'directory entry without the tag',
      (b, l) => b.u64le(l.gdSector * SECTOR, 0x2000_0000n << 32n),
      /directory entry 0 is invalid/,
      true,
    ],
    [
      'table index past 2 TiB',
      (b, l) => b.u64le(l.gdSector * SECTOR, (0x1000_0000n << 32n) | 0xffff_ffffn),
      /entry 0 names a table beyond 2 TiB/,
      true,
    ],
    // QEMU reads a table past the end of the file as zeros (unallocated grains).
    [
      'table beyond the file',
      (b, l) => b.u64le(l.gdSector * SECTOR, (0x1000_0000n << 32n) | 100000n),
      /grain table 0 at byte \d+ lies beyond the end/,
      false,
    ],
    [
      'unallocated entry with bits set',
      (b, l) => b.u64le(entryOf(l, 7), 5),
      /grain table entry 0x0+5 is invalid/,
      true,
    ],
    [
      'entry of type 4',
      (b, l) => b.u64le(entryOf(l, 7), 4n << 60n),
      /grain table entry 0x40+ has an unknown type/,
      true,
    ],
    // QEMU reads a grain past the end of the file as zeros.
    [
      'grain beyond the file',
      (b, l) => b.u64le(entryOf(l, 7), allocatedEntry(1 << 30)),
      /grain 7 at byte \d+ lies beyond the end/,
      false,
    ],
    ['grains area past 2^53', (b) => b.u64le(192, 1n << 60n), /grain \d+ at byte \d+ lies beyond the end/, false],
  ];
  for (const [name, patch, message, qemuToo] of onRead) {
    it(`on read: ${name}`, async () => {
      const { path, desc } = hostile(name.replaceAll(' ', '-'), patch);
      await openSe(path, MAIN.sectors * SECTOR).then((e) => e.close()); // the headers are fine
      await expectRefused(() => openAndRead(path), path, 'Corrupt', message);
      if (HAS_QEMU) expect(qemuRefuses(desc, t.path('out.raw')), 'qemu-img refuses too').toBe(qemuToo);
    });
  }
});
