/**
 * The block allocation table: one 64-bit entry per payload block, with a
 * sector bitmap entry after every `chunk ratio` of them. An entry holds a
 * state (low 3 bits) and a file offset in MiB (bits 20..63).
 */
import { BlockError } from '../../image/errors.js';
import * as L from './limits.js';
import type { FileRegions } from './region.js';

export interface BatGeometry {
  blockSize: number;
  /** Payload blocks per sector bitmap block: 2^23 sectors over the block's sectors. */
  chunkRatio: number;
  dataBlocks: number;
  /** Entries the table needs, bitmap entries included. */
  entries: number;
}

export function batGeometry(
  diskSize: number,
  blockSize: number,
  logicalSectorSize: number,
  hasParent: boolean,
): BatGeometry {
  const chunkRatio = (L.SECTORS_PER_BITMAP * logicalSectorSize) / blockSize;
  const dataBlocks = Math.ceil(diskSize / blockSize);
  const bitmapBlocks = Math.ceil(dataBlocks / chunkRatio);
  // As the spec and QEMU count them: a differencing disk has every bitmap entry,
  // others only those between payload entries.
  const entries = hasParent
    ? bitmapBlocks * (chunkRatio + 1)
    : dataBlocks + Math.floor(Math.max(dataBlocks - 1, 0) / chunkRatio);
  return { blockSize, chunkRatio, dataBlocks, entries };
}

/** The length of a region holding `entries` BAT entries: whole MiB, as the spec wants. */
const regionLength = (entries: number) => Math.ceil((entries * 8) / L.MiB) * L.MiB;

/** The most QEMU reads in one request (BDRV_REQUEST_MAX_BYTES): it reads the BAT region in one. */
const QEMU_MAX_REQUEST = 2 ** 31 - 512;

/**
 * The BAT region of a new image: the entries it needs, except for a disk of
 * size 0. There qemu-img counts the bitmap entries of 0 blocks in 32-bit
 * arithmetic, which wraps around to (2^32 - 1) / chunk ratio, and it opens
 * only a file whose BAT region holds that many (its own empty VHDX files are
 * laid out so). With 256 MiB blocks that region is too long for QEMU to read:
 * it can neither make nor open such an empty disk, and the region keeps the
 * size the disk needs.
 */
export function newBatLength(g: BatGeometry): number {
  const forQemu = regionLength(Math.floor(0xffffffff / g.chunkRatio));
  return g.dataBlocks === 0 && forQemu <= QEMU_MAX_REQUEST ? forQemu : regionLength(g.entries);
}

/** The BAT index of payload block `b`. */
export const payloadIndex = (g: BatGeometry, b: number) => b + Math.floor(b / g.chunkRatio);
/** The BAT index of the sector bitmap block covering payload block `b`. */
export const bitmapIndex = (g: BatGeometry, b: number) =>
  Math.floor(b / g.chunkRatio) * (g.chunkRatio + 1) + g.chunkRatio;

export class Bat {
  private readonly view: DataView;
  /** 4 KiB pages of the table changed since the last sync. */
  private dirty = new Set<number>();

  constructor(
    readonly geometry: BatGeometry,
    readonly bytes: Uint8Array,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  state(i: number): number {
    return this.view.getUint32(i * 8, true) & 7;
  }

  /** The entry's file offset in bytes (0 when none). */
  offset(i: number): number {
    const lo = this.view.getUint32(i * 8, true);
    const hi = this.view.getUint32(i * 8 + 4, true);
    return (hi * 4096 + (lo >>> 20)) * L.MiB;
  }

  set(i: number, state: number, offset: number): void {
    const mb = offset / L.MiB;
    this.view.setUint32(i * 8, (((mb % 4096) << 20) | state) >>> 0, true);
    this.view.setUint32(i * 8 + 4, Math.floor(mb / 4096), true);
    this.dirty.add(Math.floor((i * 8) / L.LOG_SECTOR_SIZE));
  }

  get hasChanges(): boolean {
    return this.dirty.size > 0;
  }

  /** The changed pages (index, bytes), forgotten until `restore`. */
  takeChanges(): number[] {
    const pages = [...this.dirty].sort((a, b) => a - b);
    this.dirty = new Set();
    return pages;
  }

  restore(pages: readonly number[]): void {
    for (const p of pages) this.dirty.add(p);
  }

  /** Page `p` of the table as it is in memory, padded to 4 KiB. */
  page(p: number): Uint8Array {
    const out = new Uint8Array(L.LOG_SECTOR_SIZE);
    out.set(this.bytes.subarray(p * L.LOG_SECTOR_SIZE, (p + 1) * L.LOG_SECTOR_SIZE));
    return out;
  }
}

/**
 * Problems with entries that point at data: past the end of the file, or
 * into the header section, log, BAT or metadata. QEMU refuses to open such
 * an image and its check counts each as a corruption, with these words.
 */
export function batProblems(bat: Bat, fileSize: number, diskSize: number, regions: FileRegions): string[] {
  const g = bat.geometry;
  const out: string[] = [];
  for (let b = 0; b < g.dataBlocks; b++) {
    const i = payloadIndex(g, b);
    const state = bat.state(i);
    if (state !== L.PAYLOAD_FULLY_PRESENT && state !== L.PAYLOAD_PARTIALLY_PRESENT) continue;
    const offset = bat.offset(i);
    const length = Math.min(g.blockSize, diskSize - b * g.blockSize);
    const truncated = `points after end of file (${fileSize}). Image has probably been truncated.`;
    if (offset >= fileSize) out.push(`VHDX BAT entry ${i} start offset ${offset} ${truncated}`);
    else if (offset + length > fileSize) out.push(`VHDX BAT entry ${i} end offset ${offset + length - 1} ${truncated}`);
    const other = offset < L.HEADER_SECTION_SIZE ? 'header section' : regions.overlap(offset, g.blockSize);
    if (other) out.push(`VHDX BAT entry ${i} (offset ${offset}) overlaps the ${other}`);
  }
  return out;
}

export function checkBatSize(g: BatGeometry, regionLength: number): void {
  if (g.entries * 8 > regionLength) {
    const message = `the VHDX BAT region (${regionLength} bytes) is too small for ${g.entries} entries`;
    throw new BlockError('Corrupt', message, { op: 'open' });
  }
}
