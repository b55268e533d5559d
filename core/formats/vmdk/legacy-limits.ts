/**
 * Limits and constants of the two read-only legacy VMDK extent kinds: ESX
 * sparse ("COWD", VMDK3) and space-efficient sparse (seSparse). Sources: QEMU's
 * block/vmdk.c (what it reads and refuses) and libyal's VMDK notes (field
 * values). Every size taken from a header is checked against these before
 * anything is allocated from it.
 */

export const SECTOR = 512;

/** Grains whose tables a read may have to load, kept per extent (QEMU keeps 16 too). */
export const TABLE_CACHE_SIZE = 16;

/**
 * Grain-table entries one blockStatus call may look at before it answers with
 * a shorter run: a hostile directory can point every entry at the same empty
 * table, and a caller asking about the whole disk must not wait for billions.
 */
export const MAX_ENTRIES_PER_STATUS = 16 * 4096;

/** Same as QEMU: at most 32 Mi grain-directory entries (no real extent needs more). */
export const MAX_DIRECTORY_ENTRIES = 32 * 1024 * 1024;

// ---------------------------------------------------------------- COWD

/** "COWD" as the first four bytes. */
export const COWD_MAGIC = 'COWD';
/** The only version VMware wrote (libvmdk); QEMU does not look, Platter refuses others. */
export const COWD_VERSION = 1;
/** The header fills the first 2048 bytes; the directory and tables come after it. */
export const COWD_HEADER_BYTES = 2048;
/** Same as QEMU: a COWD grain table always has 4096 entries of 32 bits. */
export const COWD_TABLE_ENTRIES = 4096;
/** Same as QEMU: grains above 0x200000 sectors (1 GiB) are refused as corrupt. */
export const COWD_MAX_GRAIN_SECTORS = 0x200000;

/** Field offsets of the COWD header (little-endian u32s after the magic). */
export const COWD = {
  magic: 0,
  version: 4,
  flags: 8,
  diskSectors: 12,
  granularity: 16,
  gdSector: 20,
  gdEntries: 24,
  freeSector: 28,
} as const;

// ---------------------------------------------------------------- seSparse

export const SESPARSE_CONST_MAGIC = 0xcafebaben;
export const SESPARSE_VOLATILE_MAGIC = 0xcafecafen;
/** Same as QEMU: version 2.1 (major in the high 32 bits) is the only one read. */
export const SESPARSE_VERSION = 0x0000_0002_0000_0001n;
/** Same as QEMU: 8-sector (4 KiB) grains are the only ones read. */
export const SESPARSE_GRAIN_SECTORS = 8n;
/** Same as QEMU: 64-sector grain tables (4096 entries of 64 bits, 16 MiB of guest each). */
export const SESPARSE_TABLE_SECTORS = 64n;
export const SESPARSE_TABLE_ENTRIES = 4096;
/** The const header and the volatile header are one sector each. */
export const SESPARSE_HEADER_BYTES = 512;
/**
 * seSparse disks are slightly less than 64 TiB (QEMU's note on its L1 limit);
 * a larger capacity is refused before anything is sized from it.
 */
export const SESPARSE_MAX_CAPACITY_SECTORS = (64n << 40n) / 512n;
/** Same as QEMU: a table's sector, from the tables area plus its index, must fit 32 bits. */
export const SESPARSE_MAX_TABLE_SECTOR = 0xffff_ffffn;

/** Grain-directory entries: 0, or this tag in the high 32 bits and a table index in the low 32. */
export const SESPARSE_GD_ALLOCATED = 0x1000_0000n;
/** Grain-table entry types (the top nibble). */
export const SESPARSE_GT_UNALLOCATED = 0x0n;
export const SESPARSE_GT_UNMAPPED = 0x1n; // SCSI-unmapped: reads as zeros, as QEMU reads it
export const SESPARSE_GT_ZERO = 0x2n;
export const SESPARSE_GT_ALLOCATED = 0x3n;

/** Field offsets of the seSparse const header (little-endian u64s). */
export const SESPARSE_CONST = {
  magic: 0,
  version: 8,
  capacity: 16,
  grainSize: 24,
  grainTableSize: 32,
  flags: 40,
  reserved1: 48, // reserved1..4 at 48, 56, 64, 72: all must be zero
  volatileHeaderOffset: 80,
  volatileHeaderSize: 88,
  journalHeaderOffset: 96,
  journalHeaderSize: 104,
  journalOffset: 112,
  journalSize: 120,
  grainDirOffset: 128,
  grainDirSize: 136,
  grainTablesOffset: 144,
  grainTablesSize: 152,
  freeBitmapOffset: 160,
  freeBitmapSize: 168,
  backmapOffset: 176,
  backmapSize: 184,
  grainsOffset: 192,
  grainsSize: 200,
  pad: 208, // 304 bytes to the end of the sector, all zero
} as const;

/** Field offsets of the seSparse volatile header (little-endian u64s). */
export const SESPARSE_VOLATILE = {
  magic: 0,
  freeGtNumber: 8,
  nextTxnSeqNumber: 16,
  replayJournal: 24,
  pad: 32, // 480 bytes to the end of the sector, all zero
} as const;
