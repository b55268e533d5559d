/**
 * seSparse extents: images built here field by field (no tool here writes the
 * format), read back through Platter and through qemu-img (via a small
 * descriptor), and hostile variants with one field changed.
 *
 * Layout: QEMU's block/vmdk.c (VMDKSESparseConstHeader,
 * VMDKSESparseVolatileHeader, get_cluster_offset); all fields little-endian u64.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bytes } from '../../test/headers.js';
import { prng } from '../../test/prng.js';
import { hasTool, tempDir } from '../../test/tmp.js';
import { expectRefused, openExtent, qemuRead, qemuRefusal, readAll, statusRuns } from './legacy-test-helpers.js';
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

function put(name: string, bytes: Uint8Array): string {
  const path = t.path(name);
  writeFileSync(path, bytes);
  return path;
}

/** A descriptor naming one seSparse extent, so qemu-img opens it. */
function descriptor(name: string, extent: string, sectors: number): string {
  const text = [
    '# Disk DescriptorFile',
    'version=1',
    'CID=12345678',
    'parentCID=ffffffff',
    'createType="seSparse"',
    '',
    '# Extent description',
    `RW ${sectors} SESPARSE "${extent}"`,
    '',
  ].join('\n');
  return put(name, new TextEncoder().encode(text));
}

const openSe = (path: string, length: number) => openExtent(path, (f) => openSeSparseExtent(f, length));

describe('seSparse extents', () => {
  it('read back the grains written, zeros elsewhere', async () => {
    const { file, guest } = seSparseImage(MAIN);
    const extent = await openSe(put('main-sesparse.vmdk', file), MAIN.sectors * SECTOR);
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
        expect(Buffer.from(buf).equals(Buffer.from(guest.subarray(offset, offset + length))), `at ${offset}`).toBe(true);
      }
    } finally {
      await extent.close();
    }
  });

  it('reports runs: data with host offsets, zero for types 1 and 2, unallocated (from the parent) for 0', async () => {
    const { file, layout } = seSparseImage(MAIN);
    const extent = await openSe(put('runs-sesparse.vmdk', file), MAIN.sectors * SECTOR);
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
    const path = put('x-sesparse.vmdk', file);
    const desc = descriptor('x.vmdk', 'x-sesparse.vmdk', MAIN.sectors);
    const extent = await openSe(path, MAIN.sectors * SECTOR);
    try {
      const ours = await readAll(extent);
      expect(Buffer.from(ours).equals(Buffer.from(guest))).toBe(true);
      expect(Buffer.from(qemuRead(desc, t.path('x.raw'))).equals(Buffer.from(ours))).toBe(true);
    } finally {
      await extent.close();
    }
  });
});
