/**
 * VHD's constants and limits, as Microsoft's VHD specification and QEMU's
 * block/vpc.c define them; each is checked before anything is allocated from
 * a header value.
 */

/** The footer (and its copy at the start of dynamic images): one sector. */
export const FOOTER_BYTES = 512;
/** The dynamic disk header. */
export const DYN_HEADER_BYTES = 1024;
/** Sectors of 512 bytes only (the BAT counts in them too). */
export const SECTOR_SIZE = 512;

export const FOOTER_COOKIE = 'conectix';
export const DYN_HEADER_COOKIE = 'cxsparse';

/** Disk types (footer field). */
export const TYPE_FIXED = 2;
export const TYPE_DYNAMIC = 3;
export const TYPE_DIFFERENCING = 4;

/** What QEMU writes: the reserved feature bit, format version 1.0, Virtual PC 2007's version 5.3, host "Wi2k". */
export const FEATURES_RESERVED = 0x2;
export const FORMAT_VERSION = 0x00010000;
export const CREATOR_VERSION = 0x00050003;
export const CREATOR_OS = 'Wi2k';
/** QEMU's creator apps: "qemu" when the size is the CHS geometry's, "qem2" when it is current_size (force_size). */
export const CREATOR_CHS = 'qemu';
export const CREATOR_EXACT = 'qem2';
/**
 * Same as QEMU: images made by these apps mean current_size (Hyper-V, QEMU
 * with force_size, Disk2vhd, XenConverter, XenServer's "tap" with its NUL);
 * every other creator (Virtual PC's "vpc ", "qemu") means the CHS geometry.
 */
export const CURRENT_SIZE_CREATORS: readonly string[] = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'];

/** Timestamps count seconds from 2000-01-01 00:00:00 UTC. */
export const TIMESTAMP_BASE = 946684800;
/** "No next structure": QEMU writes all 64 bits set (the spec says 0xFFFFFFFF; Microsoft's tools expect this). */
export const NO_OFFSET = 0xffffffffffffffffn;

/** The largest CHS geometry: 65535 cylinders, 16 heads, 255 sectors per track. */
export const CHS_MAX_C = 65535;
export const CHS_MAX_H = 16;
export const CHS_MAX_S = 255;
/** Sectors of the largest geometry (about 127.5 GiB); an image with it is sized by current_size (same as QEMU). */
export const MAX_GEOMETRY = CHS_MAX_C * CHS_MAX_H * CHS_MAX_S;
/** Below this (about 31.5 GiB) the spec's geometry uses 17, 31 or 63 sectors per track; from here on, 255. */
export const ATA_GEOMETRY = 65535 * 16 * 63;
/** Same as QEMU: at most 0xff000000 sectors, 2040 GiB (the 32-bit sector numbers of the BAT). */
export const MAX_SECTORS = 0xff000000;

/** What QEMU (and Platter) create: blocks of 2 MiB, the spec's default. */
export const DEFAULT_BLOCK_SIZE = 2 << 20;
/** Same as QEMU: a block size must be a power of two of at least one sector. */
export const MIN_BLOCK_SIZE = SECTOR_SIZE;
/** BAT entry of a block never written. */
export const UNALLOCATED = 0xffffffff;
/** Same as QEMU: the BAT's entries, 4 bytes each, must fit in an int's worth of bytes. */
export const MAX_TABLE_ENTRIES = Math.floor(0x7fffffff / 4);

/** Parent locator entries in the dynamic header. */
export const PARENT_LOCATORS = 8;
/** The parent's name in the dynamic header: 256 UTF-16 (big-endian) units. */
export const PARENT_NAME_BYTES = 512;
/** A locator's path is at most Windows' 32767 UTF-16 units; anything longer is damage. */
export const MAX_LOCATOR_BYTES = 65536;
/** Locator platforms Platter follows: Windows relative and absolute UTF-16LE paths, Mac OS X UTF-8 file URLs. */
export const PLATFORM_W2RU = 'W2ru';
export const PLATFORM_W2KU = 'W2ku';
export const PLATFORM_MACX = 'MacX';

/** Bytes of a block's sector bitmap: a bit per sector, padded to whole sectors. */
export function bitmapBytes(blockSize: number): number {
  return Math.ceil(blockSize / SECTOR_SIZE / 8 / SECTOR_SIZE) * SECTOR_SIZE;
}
