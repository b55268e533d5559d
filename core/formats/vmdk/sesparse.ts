/**
 * Space-efficient sparse extents (seSparse, ESXi's snapshot deltas), read-only
 * as QEMU 7.2 reads them: a const header and a volatile header of one sector
 * each, a grain directory of 64-bit entries naming grain tables by index, and
 * grain tables of 4096 64-bit entries whose top nibble says what the grain is.
 * Every check QEMU makes is made here, plus bounds QEMU leaves to the file
 * layer (metadata and grains must lie in the file). The journal, the free
 * bitmap and the backmap only matter for writing; like QEMU, this reader
 * does not look at them.
 *
 * Layout: QEMU's block/vmdk.c (VMDKSESparseConstHeader, VMDKSESparseVolatileHeader,
 * vmdk_open_se_sparse, get_cluster_offset). The format is not documented.
 */
import { BlockError, type ErrorKind } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import type { VmdkExtent } from './extent.js';
import { corrupt, type Grain, GrainMapExtent } from './legacy-grains.js';
import {
  MAX_DIRECTORY_ENTRIES,
  SECTOR,
  SESPARSE_CONST,
  SESPARSE_CONST_MAGIC,
  SESPARSE_GD_ALLOCATED,
  SESPARSE_GRAIN_SECTORS,
  SESPARSE_GT_ALLOCATED,
  SESPARSE_GT_UNALLOCATED,
  SESPARSE_GT_UNMAPPED,
  SESPARSE_GT_ZERO,
  SESPARSE_HEADER_BYTES,
  SESPARSE_MAX_CAPACITY_SECTORS,
  SESPARSE_MAX_TABLE_SECTOR,
  SESPARSE_TABLE_ENTRIES,
  SESPARSE_TABLE_SECTORS,
  SESPARSE_VERSION,
  SESPARSE_VOLATILE,
  SESPARSE_VOLATILE_MAGIC,
} from './legacy-limits.js';

const hex = (v: bigint) => `0x${v.toString(16).padStart(16, '0')}`;
const isZero = (bytes: Uint8Array) => bytes.every((b) => b === 0);

/**
 * Opens a seSparse extent. `length` is the extent's size in the descriptor,
 * which must be the header's capacity.
 */
export async function openSeSparseExtent(file: Protocol, length: number): Promise<VmdkExtent> {
  const fail = (kind: ErrorKind, message: string) => new BlockError(kind, message, { path: file.name, op: 'open' });
  const fileSize = await file.size();

  const constBuf = new Uint8Array(SESPARSE_HEADER_BYTES);
  await file.read(constBuf, 0);
  const c = new DataView(constBuf.buffer);
  const field = (at: number) => c.getBigUint64(at, true);
  const H = SESPARSE_CONST;

  const magic = field(H.magic);
  if (fileSize < SESPARSE_HEADER_BYTES || magic !== SESPARSE_CONST_MAGIC) {
    throw fail('InvalidFormat', `not a seSparse extent: const header magic ${hex(magic)}`);
  }
  const version = field(H.version);
  if (version !== SESPARSE_VERSION) {
    throw fail('Unsupported', `seSparse version ${hex(version)} is not supported (only 2.1)`);
  }
  const grainSize = field(H.grainSize);
  if (grainSize !== SESPARSE_GRAIN_SECTORS) {
    throw fail('Unsupported', `seSparse grains of ${grainSize} sectors are not supported (only 8)`);
  }
  const tableSize = field(H.grainTableSize);
  if (tableSize !== SESPARSE_TABLE_SECTORS) {
    throw fail('Unsupported', `seSparse grain tables of ${tableSize} sectors are not supported (only 64)`);
  }
  const flags = field(H.flags);
  if (flags !== 0n) throw fail('Unsupported', `unknown seSparse flags ${hex(flags)}`);
  for (let i = 0; i < 4; i++) {
    const reserved = field(H.reserved1 + 8 * i);
    if (reserved !== 0n) {
      throw fail('Unsupported', `reserved const header field ${i + 1} is ${hex(reserved)}, not zero`);
    }
  }
  if (!isZero(constBuf.subarray(H.pad))) throw fail('Unsupported', 'the const header padding is not zero');

  const capacity = field(H.capacity);
  if (capacity > SESPARSE_MAX_CAPACITY_SECTORS) {
    throw fail('Corrupt', `the capacity of ${capacity} sectors is over 64 TiB, more than seSparse holds`);
  }
  const sectors = Number(capacity);
  if (length !== sectors * SECTOR) {
    throw fail('Corrupt', `the descriptor gives ${length / SECTOR} sectors but the extent's header ${sectors}`);
  }

  /** The byte offset of a region starting at `sector`, which must lie after the const header and in the file. */
  const checkRegion = (what: string, sector: bigint, bytes: bigint): number => {
    const at = sector * BigInt(SECTOR);
    if (at < BigInt(SESPARSE_HEADER_BYTES)) {
      throw fail('Corrupt', `${what} at sector ${sector} overlaps the const header`);
    }
    if (at + bytes > BigInt(fileSize)) {
      throw fail('Corrupt', `${what} at sector ${sector} lies beyond the end of the file`);
    }
    return Number(at);
  };

  // The volatile header: where QEMU reads it, and it must be in the file.
  const volatileAt = checkRegion('the volatile header', field(H.volatileHeaderOffset), BigInt(SESPARSE_HEADER_BYTES));
  const volatileBuf = new Uint8Array(SESPARSE_HEADER_BYTES);
  await file.read(volatileBuf, volatileAt);
  const v = new DataView(volatileBuf.buffer);
  const V = SESPARSE_VOLATILE;
  const volatileMagic = v.getBigUint64(V.magic, true);
  if (volatileMagic !== SESPARSE_VOLATILE_MAGIC) {
    throw fail('Corrupt', `bad volatile header magic ${hex(volatileMagic)}`);
  }
  if (v.getBigUint64(V.replayJournal, true) !== 0n) {
    throw fail('Unsupported', 'the image is dirty: its journal needs replaying, which is not supported');
  }
  if (!isZero(volatileBuf.subarray(V.pad))) throw fail('Unsupported', 'the volatile header padding is not zero');

  // The grain directory: its size within QEMU's limit, covering the disk, in the file.
  const gdSectors = field(H.grainDirSize);
  const gdEntriesBig = (gdSectors * BigInt(SECTOR)) / 8n;
  if (gdEntriesBig > BigInt(MAX_DIRECTORY_ENTRIES)) {
    const most = MAX_DIRECTORY_ENTRIES;
    throw fail('Corrupt', `the grain directory of ${gdSectors} sectors is too big (at most ${most} entries)`);
  }
  const gdEntries = Number(gdEntriesBig);
  const tableCovers = SESPARSE_GRAIN_SECTORS * BigInt(SESPARSE_TABLE_ENTRIES);
  if (gdEntriesBig * tableCovers < capacity) {
    throw fail('Corrupt', `the grain directory of ${gdEntries} entries does not cover the disk's ${sectors} sectors`);
  }
  const gdAt = checkRegion('the grain directory', field(H.grainDirOffset), BigInt(gdEntries * 8));
  const gdBuf = new Uint8Array(gdEntries * 8);
  await file.read(gdBuf, gdAt);
  const gd = new DataView(gdBuf.buffer);

  const tablesSector = field(H.grainTablesOffset);
  const grainsSector = field(H.grainsOffset);

  return new GrainMapExtent(file, fileSize, {
    length: sectors * SECTOR,
    grainSize: Number(SESPARSE_GRAIN_SECTORS) * SECTOR,
    tableEntries: SESPARSE_TABLE_ENTRIES,
    entryBytes: 8,
    dataStart: SESPARSE_HEADER_BYTES,
    tableOffset: (index) => {
      const entry = gd.getBigUint64(index * 8, true);
      if (entry === 0n) return undefined;
      // An allocated entry is the tag in the high 32 bits and a table index in the low 32.
      if (entry >> 32n !== SESPARSE_GD_ALLOCATED) {
        throw corrupt(`grain directory entry ${index} is invalid (${hex(entry)})`);
      }
      const sector = tablesSector + (entry & 0xffff_ffffn) * SESPARSE_TABLE_SECTORS;
      if (sector > SESPARSE_MAX_TABLE_SECTOR) {
        throw corrupt(`grain directory entry ${index} names a table beyond 2 TiB`);
      }
      return Number(sector) * SECTOR;
    },
    grain: (table, index) => decodeGrain(table.getBigUint64(index * 8, true), grainsSector),
  });
}

/** What one grain-table entry says, by its top nibble (as QEMU reads it). */
function decodeGrain(entry: bigint, grainsSector: bigint): Grain {
  switch (entry >> 60n) {
    case SESPARSE_GT_UNALLOCATED:
      if (entry !== 0n) throw corrupt(`grain table entry ${hex(entry)} is invalid`);
      return { state: 'unallocated' };
    case SESPARSE_GT_UNMAPPED:
    case SESPARSE_GT_ZERO:
      return { state: 'zero' };
    case SESPARSE_GT_ALLOCATED: {
      // The grain's index is stored rotated: its low 12 bits in bits 48-59, the rest in bits 0-47.
      const grain = ((entry >> 48n) & 0xfffn) | ((entry & 0xffff_ffff_ffffn) << 12n);
      const sector = grainsSector + grain * SESPARSE_GRAIN_SECTORS;
      // Past 2^53 the number is inexact but still beyond any file, which the reader refuses.
      return { state: 'data', hostOffset: Number(sector * BigInt(SECTOR)) };
    }
    default:
      throw corrupt(`grain table entry ${hex(entry)} has an unknown type`);
  }
}
