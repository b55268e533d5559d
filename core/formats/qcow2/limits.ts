/**
 * qcow2's limits, as QEMU enforces them (block/qcow2.h), each checked before
 * anything is allocated from a header value.
 */

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

/** Smallest cluster: 512 bytes (the format's own minimum). */
export const MIN_CLUSTER_BITS = 9;
/** Largest cluster QEMU opens: 2 MiB. */
export const MAX_CLUSTER_BITS = 21;
/** Same as QEMU: the L1 table is at most 32 MiB. */
export const MAX_L1_BYTES = 32 << 20;
/** Same as QEMU: the refcount table is at most 8 MiB. */
export const MAX_REFTABLE_BYTES = 8 << 20;
/** Same as QEMU: at most 65536 internal snapshots. */
export const MAX_SNAPSHOTS = 65536;
/** Same as QEMU: the snapshot table is at most 64 MiB. */
export const MAX_SNAPSHOT_TABLE_BYTES = 64 << 20;
/** Same as QEMU: backing file names are at most 1023 bytes. */
export const MAX_BACKING_NAME = 1023;
/** Header extensions must fit in the first cluster; each at most this long. */
export const MAX_EXTENSION_BYTES = 2 << 20;
/**
 * Host offsets live in bits 9-55 of table entries (2^56). JavaScript numbers
 * are exact to 2^53 (8 PiB), which is the limit here; larger offsets are
 * refused as corrupt rather than misread.
 */
export const MAX_HOST_OFFSET = 2 ** 53;

/** Header sizes: version 2 is fixed; version 3 has at least 104 bytes. */
export const V2_HEADER_LENGTH = 72;
export const V3_MIN_HEADER_LENGTH = 104;
/** What Platter writes for version 3: up to compression_type, padded to 8. */
export const V3_HEADER_LENGTH = 112;

/** Incompatible feature bits. */
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN = (1n << 5n) - 1n;

/** Compatible feature bits. */
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;

/** Autoclear feature bits. */
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

/** Header extension types. */
export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** L1/L2/refcount-table entry bits. */
export const OFLAG_COPIED = 1n << 63n;
export const OFLAG_COMPRESSED = 1n << 62n;
export const OFLAG_ZERO = 1n;
/** Bits 9-55: a cluster-aligned host offset. */
export const OFFSET_MASK = 0x00fffffffffffe00n;
/** Bits that must be zero in an L1 entry (1-8 and 56-62). */
export const L1_RESERVED_MASK = 0x7f000000000001ffn;
/** Bits that must be zero in a standard L2 entry (1-8 and 56-61). */
export const L2_STANDARD_RESERVED_MASK = 0x3f000000000001fen;
/** Extended L2 entries: each cluster is split into this many subclusters. */
export const SUBCLUSTERS = 32;
/** Same as QEMU: subclusters are at least 512 bytes, so extended L2 needs clusters of at least 16 KiB. */
export const MIN_EXTL2_CLUSTER_BITS = 14;
/** Bytes per L2 entry: 8, or 16 with extended L2 entries (entry + subcluster bitmap). */
export const L2_ENTRY_BYTES = 8;
export const L2_EXTENDED_ENTRY_BYTES = 16;
/** Bits that must be zero in a refcount table entry (0-8). */
export const REFT_RESERVED_MASK = 0x1ffn;

/** Same as QEMU: a snapshot entry's extra data is at most 1 KiB. */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** Version 3 snapshot entries carry at least this much extra data (VM state size, disk size). */
export const SNAPSHOT_EXTRA_DATA_V3 = 16;

/** Same as QEMU: at most 65535 persistent bitmaps. */
export const MAX_BITMAPS = 65535;
/** Same as QEMU: the bitmap directory is at most 1 KiB per bitmap (64 MiB). */
export const MAX_BITMAP_DIRECTORY_BYTES = 1024 * MAX_BITMAPS;
/** Same as QEMU: a bitmap table has at most 2^27 entries. */
export const MAX_BITMAP_TABLE_ENTRIES = 0x8000000;
/** Same as QEMU: a bitmap's data clusters hold at most 512 MiB (it lives in memory). */
export const MAX_BITMAP_DATA_BYTES = 0x20000000;
/** Same as QEMU: a bitmap bit covers 512 bytes to 2 GiB. */
export const MIN_BITMAP_GRANULARITY_BITS = 9;
export const MAX_BITMAP_GRANULARITY_BITS = 31;
/** Same as QEMU: bitmap names are at most 1023 bytes. */
export const MAX_BITMAP_NAME = 1023;
/** The bitmaps extension's fixed length. */
export const BITMAPS_EXTENSION_BYTES = 24;
/** A bitmap directory entry's fixed part, before its extra data and name. */
export const BITMAP_ENTRY_HEADER_BYTES = 24;
/** Bitmap flags: written by a program that had it open (its data may be stale); tracks writes. */
export const BITMAP_IN_USE = 1 << 0;
export const BITMAP_AUTO = 1 << 1;
/** Same as QEMU: every other flag (extra_data_compatible included) is refused. */
export const BITMAP_RESERVED_FLAGS = 0xfffffffc;
/** The only bitmap type: dirty tracking. */
export const BITMAP_TYPE_DIRTY_TRACKING = 1;
/** Bitmap table entries: bits 1-8 and 56-63 must be zero; bit 0 alone means "all ones". */
export const BITMAP_TABLE_RESERVED_MASK = 0xff000000000001fen;
export const BITMAP_TABLE_ALL_ONES = 1n;
