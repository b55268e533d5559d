/**
 * VDI's constants and limits, as QEMU's block/vdi.c and VirtualBox's VDI
 * header (v1.1) define them; each is checked before anything is allocated
 * from a header value.
 */

/** At byte 64, after the text banner. */
export const VDI_SIGNATURE = 0xbeda107f;
/** Version 1.1 (major in the high half): the only version QEMU and Platter open. */
export const VDI_VERSION_1_1 = 0x00010001;
/** The header sector: banner, signature, version, then `header size` bytes of fields. */
export const HEADER_BYTES = 512;
/** The v1.1 header's field area (what QEMU writes). */
export const HEADER_SIZE = 0x180;
/** VirtualBox's v1.1 "plus" header: the same fields and an LCHS geometry, ignored here. */
export const HEADER_SIZE_PLUS = 0x190;
/** What QEMU (and Platter) write in the banner; readers ignore it. */
export const BANNER = '<<< QEMU VM Virtual Disk Image >>>\n';

/** Blocks are allocated as the guest writes them. */
export const TYPE_DYNAMIC = 1;
/** Every block is allocated when the image is created. */
export const TYPE_STATIC = 2;

/** Same as QEMU: sectors of 512 bytes only. */
export const SECTOR_SIZE = 512;
/** Same as QEMU: blocks of exactly 1 MiB (VirtualBox's default; QEMU builds without other sizes). */
export const BLOCK_SIZE = 1 << 20;

/** A block map entry for a block never written: it reads as zeros. */
export const UNALLOCATED = 0xffffffff;
/** A block map entry for a block discarded (zeroed) after being written. */
export const DISCARDED = 0xfffffffe;
/** Entries below DISCARDED index a data block. */
export const isAllocated = (entry: number) => entry < DISCARDED;

/**
 * Same as QEMU (VDI_BLOCKS_IN_IMAGE_MAX): the block map, rounded up to a
 * sector, must stay below 2 GiB (QEMU reads it in one request).
 */
export const MAX_BLOCKS = 0x1fffff80;
/** Same as QEMU (VDI_DISK_SIZE_MAX): every block of the largest map, 512 TiB - 128 MiB. */
export const MAX_DISK_SIZE = MAX_BLOCKS * BLOCK_SIZE;
