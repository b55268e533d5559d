/**
 * VMDK's constants and limits, as QEMU enforces them (block/vmdk.c), each
 * checked before anything is allocated from a header or descriptor value.
 */

export const SECTOR = 512;

/** Header magics: "KDMV" (hosted sparse, VMDK4) and "COWD" (ESX sparse, VMDK3). */
export const SPARSE_MAGIC = 'KDMV';
export const COWD_MAGIC = 'COWD';

/** Header flags. */
export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;
/** Every flag bit the format defines; images with others are refused rather than misread. */
export const FLAGS_KNOWN = FLAG_NL_DETECT | FLAG_RGD | FLAG_ZERO_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS;

/** compressAlgorithm values. */
export const COMPRESSION_NONE = 0;
export const COMPRESSION_DEFLATE = 1;

/** Highest header version QEMU opens (3 adds changed block tracking; read-only unless compressed). */
export const MAX_VERSION = 3;
/** gdOffset meaning "the grain directory is named by the footer at the end of the file". */
export const GD_AT_END = 0xffffffffffffffffn;
/** The newline-detection bytes: a text-mode transfer would have changed them. */
export const NL_CHECK_BYTES = [0x0a, 0x20, 0x0d, 0x0a] as const;

/** Same as QEMU: a grain of more than 1 GiB (0x200000 sectors) is corruption. */
export const MAX_GRAIN_SECTORS = 0x200000;
/** Same as QEMU: grain tables have at most 512 entries. */
export const MAX_GTES_PER_GT = 512;
/** What QEMU and VMware write: 512 entries of 4 bytes per grain table. */
export const GTES_PER_GT = 512;
/** Same as QEMU: the grain directory (L1) has at most 32M entries. */
export const MAX_GD_ENTRIES = 32 * 1024 * 1024;
/** Same as QEMU: grain table entries are 32-bit sector numbers, so grains live below 2 TiB of file. */
export const MAX_EXTENT_FILE_SECTORS = 2 ** 32;
/** Guest sizes must stay exact in JavaScript numbers (2^53 bytes). */
export const MAX_CAPACITY_SECTORS = 2 ** 53 / SECTOR;
/** Same as QEMU: a descriptor is read up to 1 MiB - 1 bytes; longer ones are refused, not cut. */
export const MAX_DESCRIPTOR_BYTES = (1 << 20) - 1;
/** Extents one descriptor may list: 8 TiB in 2 GiB extents (VMware Workstation's largest disk). */
export const MAX_EXTENTS = 4096;
/** Same as QEMU: descriptors embedded in a sparse file get 20 sectors. */
export const EMBEDDED_DESCRIPTOR_SECTORS = 20;
/** Same as QEMU: grains of 64 KiB (128 sectors) in every new sparse extent. */
export const DEFAULT_GRAIN_SECTORS = 128;
/** Same as QEMU: split subformats use extents of at most 2 GiB. */
export const SPLIT_EXTENT_BYTES = 0x80000000;
/** Grain tables kept in memory at most (8 MiB of 512-entry tables, 256 GiB of guest at 64 KiB grains). */
export const MAX_CACHED_TABLES = 4096;
/** A grain table entry meaning "this grain reads as zeros" (with FLAG_ZERO_GRAIN). */
export const GTE_ZEROED = 1;

/** Stream markers: {lba u64, size u32, type u32} in one sector (size 0 marks metadata). */
export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;
/** A compressed grain's marker: lba u64 + size u32, then the deflate stream. */
export const GRAIN_MARKER_BYTES = 12;

/** The CID of an image that has no parent. */
export const NO_PARENT_CID = 0xffffffff;
