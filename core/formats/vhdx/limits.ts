/**
 * VHDX's constants and limits, from Microsoft's VHDX Format Specification
 * v1.00 ([MS-VHDX]) and QEMU's block/vhdx.h; every value read from a file is
 * checked against these before it is used.
 */

export const KiB = 1024;
export const MiB = 1 << 20;

/** "vhdxfile" at byte 0: the file type identifier. */
export const FILE_SIGNATURE = 'vhdxfile';
/** The header section: identifier, two headers, two region tables (spec: 1 MiB, always first). */
export const HEADER_SECTION_SIZE = MiB;
/** Each structure in the header section sits in its own 64 KiB. */
export const HEADER_BLOCK_SIZE = 64 * KiB;
export const HEADER1_OFFSET = 64 * KiB;
export const HEADER2_OFFSET = 128 * KiB;
export const REGION_TABLE1_OFFSET = 192 * KiB;
export const REGION_TABLE2_OFFSET = 256 * KiB;
/** A header's checksum covers its first 4 KiB (the spec's header size). */
export const HEADER_SIZE = 4 * KiB;
/** "head", "regi", "metadata": the structure signatures. */
export const HEADER_SIGNATURE = 'head';
export const REGION_SIGNATURE = 'regi';
export const METADATA_SIGNATURE = 'metadata';
/** The only header version the spec defines (QEMU skips a header of any other). */
export const HEADER_VERSION = 1;
/** The only log version the spec defines. */
export const LOG_VERSION = 0;

/** Spec: a region table holds at most 2047 entries (its 64 KiB less the header). */
export const MAX_REGION_ENTRIES = 2047;
/** Region table entry flag: a reader that does not know the region must refuse the file. */
export const REGION_REQUIRED = 1;
/** Spec: objects (log, regions, blocks) are placed on 1 MiB boundaries. */
export const OBJECT_ALIGNMENT = MiB;

/** Spec: the metadata table is the region's first 64 KiB: 2047 entries after a 32-byte header. */
export const METADATA_TABLE_SIZE = 64 * KiB;
export const MAX_METADATA_ENTRIES = 2047;
/** Spec: metadata items live past the table and are at most 1 MiB each. */
export const MAX_METADATA_ITEM = MiB;
/** Metadata entry flags. */
export const META_IS_USER = 1;
export const META_IS_VIRTUAL_DISK = 2;
export const META_IS_REQUIRED = 4;
/** File parameters flags. */
export const PARAM_LEAVE_BLOCKS_ALLOCATED = 1;
export const PARAM_HAS_PARENT = 2;

/** Spec: payload blocks are a power of two from 1 MiB to 256 MiB. */
export const MIN_BLOCK_SIZE = MiB;
export const MAX_BLOCK_SIZE = 256 * MiB;
/** Spec: logical and physical sectors are 512 or 4096 bytes. */
export const SECTOR_SIZES = [512, 4096] as const;
/** Same as QEMU (VHDX_MAX_IMAGE_SIZE): 64 TiB, the spec's largest virtual disk. */
export const MAX_DISK_SIZE = 64 * 1024 * 1024 * MiB;
/** Spec: one sector bitmap block (1 MiB) covers 2^23 sectors; the chunk ratio follows from it. */
export const SECTORS_PER_BITMAP = 1 << 23;
/** Spec: a sector bitmap block is 1 MiB. */
export const BITMAP_BLOCK_SIZE = MiB;

/** BAT entry states (low 3 bits); the file offset is in MiB in bits 20..63. */
export const PAYLOAD_NOT_PRESENT = 0;
export const PAYLOAD_UNDEFINED = 1;
export const PAYLOAD_ZERO = 2;
export const PAYLOAD_UNMAPPED = 3;
/** Same as QEMU: draft v0.95 images used 5 for unmapped; it reads as zeros too. */
export const PAYLOAD_UNMAPPED_V095 = 5;
export const PAYLOAD_FULLY_PRESENT = 6;
export const PAYLOAD_PARTIALLY_PRESENT = 7;
/** Sector bitmap block states. */
export const SB_NOT_PRESENT = 0;
export const SB_PRESENT = 6;

/** Log sectors are 4 KiB; entries are whole sectors. */
export const LOG_SECTOR_SIZE = 4 * KiB;
/** Spec: the log is a whole number of MiB, at least one. */
export const MIN_LOG_SIZE = MiB;
/** Same as QEMU: the log's length field is 32 bits, so under 4 GiB. */
export const MAX_LOG_SIZE = 4096 * MiB - MiB;
/** Default log size (same as QEMU's DEFAULT_LOG_SIZE). */
export const DEFAULT_LOG_SIZE = MiB;
export const LOG_ENTRY_SIGNATURE = 'loge';
export const LOG_DESC_SIGNATURE = 'desc';
export const LOG_ZERO_SIGNATURE = 'zero';
export const LOG_DATA_SIGNATURE = 'data';
export const LOG_HEADER_SIZE = 64;
export const LOG_DESC_SIZE = 32;
/**
 * Descriptors per log entry that QEMU can replay: 7.2's log reader reads an
 * entry's descriptor sectors all into the same 4 KiB, so only an entry whose
 * header and descriptors fit in its first sector (64 + 126 x 32 bytes) is
 * readable there. Platter writes no larger entry, so qemu-img can repair a
 * crash at any point.
 */
export const QEMU_MAX_LOG_DESCRIPTORS = (LOG_SECTOR_SIZE - LOG_HEADER_SIZE) / LOG_DESC_SIZE;
/** A data sector carries 4084 bytes; the first 8 and last 4 ride in its descriptor. */
export const LOG_DATA_BYTES = 4084;
/**
 * A read-only open replays a dirty log over the file without changing it:
 * each sector the log replaces (and each range it zeroes) is noted in memory,
 * some 60 bytes apiece, the data staying in the log. Real logs replace BAT
 * pages and metadata, and the largest BAT (64 TiB in 1 MiB blocks) is 512 MiB:
 * 131072 sectors. Twice that is allowed (some 16 MiB of index); a log that
 * replaces more is refused read-only, while check -r all, which replays it
 * into the file a descriptor sector at a time, has no such limit.
 */
export const MAX_LOG_OVERLAY_SECTORS = 262144;

/**
 * The log search checksums candidate entries; a real log's entries are each
 * read a few times at most, so at most this many times the log's length are
 * read before the log is called damaged (QEMU's search has no bound).
 */
export const LOG_SEARCH_BUDGET = 8;

/** Same as QEMU: a new image's data starts 5 MiB past the BAT's end, room for growth of the metadata. */
export const CREATE_DATA_GAP = 5 * MiB;
/** Same as QEMU: the metadata region of a new image is 1 MiB. */
export const CREATE_METADATA_SIZE = MiB;
