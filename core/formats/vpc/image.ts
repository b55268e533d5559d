/**
 * An open dynamic or differencing VHD: guest blocks (2 MiB from qemu-img),
 * each mapped by the BAT to a sector bitmap followed by the block's data, or
 * to nothing.
 *
 * Reads: in a dynamic image an allocated block is all data, whatever its
 * bitmap says (as QEMU reads it); in a differencing image a clear bit sends
 * that sector to the parent. Differencing images are read-only here (QEMU
 * does not follow the parent at all).
 *
 * Writes: a new block goes where the footer was, at the end of the file:
 * its bitmap (all set, as QEMU writes it), the data written, then (once per
 * request) the footer at the new end. The BAT stays in memory and goes out
 * on flush (and close), after a flush of the data and footer. A crash
 * before the footer leaves the old BAT, which points only at whole blocks,
 * and the footer copy at the start (which QEMU and Platter open dynamic
 * images by; vhdiinfo wants the one at the end, missing only in that
 * window, as with QEMU); a crash after it leaves unreferenced blocks before
 * a good footer. Either way qemu-img reads the image as it was at the last
 * flush, plus completed blocks at most, never a BAT entry past the end of
 * the file.
 */
import type { ClusterPlacement, FormatImage, FormatInfo, HasBacking, LayerExtent, PlacesClusters } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { Mutex, RangeLock } from '../../image/locks.js';
import type { Protocol } from '../../io/protocol.js';
import type { Footer } from './footer.js';
import * as L from './limits.js';

type Backing = { read(buf: Uint8Array, offset: number): Promise<void>; size: number };

export interface DynamicLayout {
  tableOffset: number;
  blockSize: number;
  /** The BAT, in host order: a block's first sector in the file, or UNALLOCATED. */
  bat: Uint32Array;
  /** The file's length when opened: space below it that no block uses may hold stale bytes. */
  fileSize: number;
}

/** A part of a request within one block, and the block's BAT entry. */
type Piece = { at: number; len: number; block: number; entry: number };

/** Bitmaps a differencing image keeps in memory (2 MiB of them) before starting over. */
const BITMAP_CACHE = 4096;
/** Bytes of a BAT sector: 128 entries. */
const BAT_SECTOR_ENTRIES = L.SECTOR_SIZE / 4;

export class DynamicVpcImage implements FormatImage, HasBacking, PlacesClusters {
  readonly size: number;
  readonly differencing: boolean;
  private readonly blockSize: number;
  private readonly bitmapSize: number;
  /** Where the next block goes: past every block in use and the BAT (QEMU's free_data_block_offset). */
  private nextFree: number;
  /** Where the footer is on disk now. */
  private footerAt: number;
  /** BAT sectors changed since the last flush. */
  private readonly dirty = new Set<number>();
  /** Sector bitmaps of a differencing image's blocks, read once (up to BITMAP_CACHE of them). */
  private readonly bitmaps = new Map<number, Uint8Array>();
  /** Blocks whose bitmap is known to have every bit set: writes to them need not look at it. */
  private readonly fullBitmaps = new Set<number>();
  private backing?: Backing;
  /** Requests hold the blocks they touch, so a block's first write (which allocates it) is never overtaken. */
  private readonly ranges = new RangeLock();
  private readonly meta = new Mutex();

  constructor(
    readonly proto: Protocol,
    readonly footer: Footer,
    private readonly layout: DynamicLayout,
    readonly readOnly: boolean,
    readonly backingRef?: { filename: string },
  ) {
    this.size = footer.size;
    this.differencing = footer.diskType === L.TYPE_DIFFERENCING;
    this.blockSize = layout.blockSize;
    this.bitmapSize = L.bitmapBytes(layout.blockSize);
    this.nextFree = roundUp(layout.tableOffset + layout.bat.length * 4);
    for (const e of layout.bat) if (e !== L.UNALLOCATED) this.nextFree = Math.max(this.nextFree, this.blockEnd(e));
    this.footerAt = this.nextFree;
  }

  /** The end of the bitmap and data of the block whose BAT entry is `e`. */
  private blockEnd(e: number): number {
    return e * L.SECTOR_SIZE + this.bitmapSize + this.blockSize;
  }

  setBacking(backing: Backing | undefined): void {
    this.backing = backing;
  }

  /** The first and last block of a byte range. */
  private blocksOf(offset: number, length: number): [number, number] {
    return [Math.floor(offset / this.blockSize), Math.floor((offset + Math.max(length, 1) - 1) / this.blockSize)];
  }

  /** The pieces of [offset, offset + length) within one block each. */
  private *pieces(offset: number, length: number): Generator<Piece> {
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const block = Math.floor(at / this.blockSize);
      const len = Math.min(this.blockSize - (at % this.blockSize), end - at);
      yield { at, len, block, entry: this.layout.bat[block] };
      at += len;
    }
  }

  /** Where guest byte `at` of a block whose BAT entry is `entry` is in the file. */
  private hostOffset(entry: number, at: number): number {
    return entry * L.SECTOR_SIZE + this.bitmapSize + (at % this.blockSize);
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.ranges.hold(...this.blocksOf(offset, buf.length), async () => {
      for (const p of this.pieces(offset, buf.length)) {
        const part = buf.subarray(p.at - offset, p.at - offset + p.len);
        if (p.entry === L.UNALLOCATED) await this.readParent(part, p.at);
        else if (!this.differencing) await this.proto.read(part, this.hostOffset(p.entry, p.at));
        else {
          for (const run of await this.bitmapRuns(p.block, p.entry, p.at, p.len)) {
            const sub = part.subarray(run.at - p.at, run.at - p.at + run.len);
            if (run.present) await this.proto.read(sub, this.hostOffset(p.entry, run.at));
            else await this.readParent(sub, run.at);
          }
        }
      }
    });
  }

  /** Bytes this image does not hold: the parent's, or zeros (past the parent's end too). */
  private async readParent(part: Uint8Array, at: number): Promise<void> {
    const fromParent = this.backing ? Math.max(0, Math.min(part.length, this.backing.size - at)) : 0;
    if (fromParent > 0) await this.backing!.read(part.subarray(0, fromParent), at);
    part.fill(0, fromParent);
  }

  /** Runs of sectors in [at, at + len) (within one block) that this image holds, or not. */
  private async bitmapRuns(block: number, entry: number, at: number, len: number) {
    let bitmap = this.bitmaps.get(block);
    if (!bitmap) {
      bitmap = await this.readBitmap(entry);
      if (this.bitmaps.size >= BITMAP_CACHE) this.bitmaps.clear();
      this.bitmaps.set(block, bitmap);
    }
    const bit = (s: number) => (bitmap[s >> 3] & (0x80 >> (s & 7))) !== 0;
    const runs: { at: number; len: number; present: boolean }[] = [];
    const end = at + len;
    for (let pos = at; pos < end; ) {
      const present = bit(Math.floor((pos % this.blockSize) / L.SECTOR_SIZE));
      let next = (Math.floor(pos / L.SECTOR_SIZE) + 1) * L.SECTOR_SIZE;
      while (next < end && bit(Math.floor((next % this.blockSize) / L.SECTOR_SIZE)) === present) next += L.SECTOR_SIZE;
      next = Math.min(next, end);
      runs.push({ at: pos, len: next - pos, present });
      pos = next;
    }
    return runs;
  }

  private async readBitmap(entry: number): Promise<Uint8Array> {
    const bitmap = new Uint8Array(this.bitmapSize);
    await this.proto.read(bitmap, entry * L.SECTOR_SIZE);
    return bitmap;
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.ranges.hold(...this.blocksOf(offset, buf.length), async () => {
      let allocated = false;
      for (const p of this.pieces(offset, buf.length)) {
        const part = buf.subarray(p.at - offset, p.at - offset + p.len);
        if (p.entry === L.UNALLOCATED) {
          const entry = await this.meta.run(() => this.allocate(p.block, part, p.at));
          if (entry !== undefined) await this.proto.write(part, this.hostOffset(entry, p.at));
          allocated = true;
        } else {
          await this.proto.write(part, this.hostOffset(p.entry, p.at));
          await this.markPresent(p.block, p.entry, p.at, p.len);
        }
      }
      if (allocated) await this.meta.run(() => this.writeFooter());
    });
  }

  /** The footer at the end of the blocks, past every block reserved so far (under the metadata lock). */
  private async writeFooter(): Promise<void> {
    if (this.footerAt === this.nextFree) return;
    await this.proto.write(this.footer.raw, this.nextFree);
    this.footerAt = this.nextFree;
  }

  /**
   * Sets the bitmap bits of sectors just written to a block made by another
   * tool: Platter (like QEMU) reads a dynamic block whole, but Virtual PC
   * and Hyper-V read sectors with a clear bit as zeros. The data goes first,
   * so a crash never marks sectors present that were not written.
   */
  private async markPresent(block: number, entry: number, at: number, len: number): Promise<void> {
    if (this.fullBitmaps.has(block)) return;
    const bitmap = await this.readBitmap(entry);
    const first = Math.floor((at % this.blockSize) / L.SECTOR_SIZE);
    const last = Math.floor(((at % this.blockSize) + len - 1) / L.SECTOR_SIZE);
    let changed = false;
    for (let sector = first; sector <= last; sector++) {
      const mask = 0x80 >> (sector & 7);
      if (!(bitmap[sector >> 3] & mask)) {
        bitmap[sector >> 3] |= mask;
        changed = true;
      }
    }
    if (changed) await this.proto.write(bitmap, entry * L.SECTOR_SIZE);
    if (this.allPresent(bitmap)) this.fullBitmaps.add(block);
  }

  /** Whether every sector of a block has its bit set (the padding after them does not count). */
  private allPresent(bitmap: Uint8Array): boolean {
    const sectors = this.blockSize / L.SECTOR_SIZE;
    for (let s = 0; s < sectors; s += 8) {
      const bits = Math.min(8, sectors - s);
      const mask = (0xff00 >> bits) & 0xff;
      if ((bitmap[s >> 3] & mask) !== mask) return false;
    }
    return true;
  }

  /**
   * Gives `block` the next free place: its bitmap, all set, and (where the
   * place may hold stale bytes from a crash) zeros around the data being
   * written. Returns the new entry, or undefined when the data went out
   * with the zeros. Runs under the metadata lock, so a footer write never
   * lands on a bitmap.
   */
  private async allocate(block: number, part: Uint8Array, at: number): Promise<number | undefined> {
    const start = this.claim(this.bitmapSize + this.blockSize);
    const bitmap = this.fullBitmap();
    // Past the blocks in use lie the footer (which the bitmap covers) and nothing else, unless the
    // file was longer when opened (blocks written before a crash, never referenced): those bytes must not show.
    const stale = start + this.bitmapSize < this.layout.fileSize;
    const entry = start / L.SECTOR_SIZE;
    let written: number | undefined = entry;
    if (stale) {
      const whole = new Uint8Array(this.bitmapSize + this.blockSize);
      whole.set(bitmap);
      whole.set(part, this.bitmapSize + (at % this.blockSize));
      await this.proto.write(whole, start);
      written = undefined;
    } else {
      await this.proto.write(bitmap, start);
    }
    this.point(block, entry);
    return written;
  }

  /** `bytes` past the blocks in use, for new blocks (under the metadata lock): where they start. */
  private claim(bytes: number): number {
    const start = this.nextFree;
    if ((start + bytes) / L.SECTOR_SIZE >= L.UNALLOCATED) {
      throw new BlockError('Unsupported', 'the image file is full: VHD blocks must start in its first 2 TiB');
    }
    this.nextFree = start + bytes;
    return start;
  }

  /** A new block's bitmap: every sector present. */
  private fullBitmap(): Uint8Array {
    return new Uint8Array(this.bitmapSize).fill(0xff);
  }

  /** Points `block`'s BAT entry at a new block with a full bitmap (under the metadata lock). */
  private point(block: number, entry: number): void {
    this.layout.bat[block] = entry;
    this.fullBitmaps.add(block);
    this.dirty.add(Math.floor(block / BAT_SECTOR_ENTRIES));
  }

  /**
   * Placed copies into a dynamic VHD with no block yet (PlacesClusters):
   * other threads write blocks' data past the BAT, one block after another
   * like any new block, and `map` writes each one's bitmap (all set) and
   * points the BAT at it. Nothing else allocates meanwhile, so a copy reserves all
   * it could need at once and gives back the end it did not use.
   */
  clusterPlacement(): ClusterPlacement | undefined {
    // Past the footer, a file longer than that holds stale blocks (a crash), not zeros.
    const zerosPastFooter = this.layout.fileSize <= this.footerAt + L.SECTOR_SIZE;
    if (this.differencing || !zerosPastFooter || this.layout.bat.some((e) => e !== L.UNALLOCATED)) return undefined;
    const stride = this.bitmapSize + this.blockSize;
    // A copy reserves room for every block at once: that must fit where VHD blocks may start.
    if ((this.nextFree + this.layout.bat.length * stride) / L.SECTOR_SIZE >= L.UNALLOCATED) return undefined;
    return {
      clusterSize: this.blockSize,
      hostStride: stride,
      appendOnly: true,
      reserve: (count) => this.meta.run(async () => this.claim(count * stride) + this.bitmapSize),
      unreserve: (host, count) =>
        this.meta.run(async () => {
          const start = host - this.bitmapSize;
          if (start + count * stride === this.nextFree) this.nextFree = start;
        }),
      map: (first, host, count) =>
        this.meta.run(async () => {
          for (let k = 0; k < count; k++) {
            const block = first + k;
            if (!(block < this.layout.bat.length) || this.layout.bat[block] !== L.UNALLOCATED) {
              throw new BlockError('InvalidArgument', `block ${block} is mapped already or out of range`);
            }
            const start = host + k * stride - this.bitmapSize;
            await this.proto.write(this.fullBitmap(), start);
            this.point(block, start / L.SECTOR_SIZE);
          }
        }),
    };
  }

  /**
   * Zeros: blocks never written read as zeros already (in a dynamic image),
   * the rest get zeros in the file, a hole where `mayUnmap` allows (QEMU's
   * vpc has no zero writes or discard: its block layer writes zeros; blocks
   * are never given back, and QEMU maps them as data, holes or not).
   */
  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    await this.ranges.hold(...this.blocksOf(offset, length), async () => {
      for (const p of this.pieces(offset, length)) {
        if (p.entry === L.UNALLOCATED) continue;
        await this.proto.writeZeroes(this.hostOffset(p.entry, p.at), p.len, mayUnmap);
      }
    });
  }

  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length, true);
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    const first = this.pieces(offset, length).next().value!;
    if (first.entry === L.UNALLOCATED) {
      // Runs of unallocated blocks together, as QEMU reports them.
      let len = 0;
      for (const p of this.pieces(offset, length)) {
        if (p.entry !== L.UNALLOCATED) break;
        len += p.len;
      }
      return { offset, length: len, state: this.differencing ? 'unallocated' : 'zero' };
    }
    // QEMU maps an allocated block as data without asking the file about holes in it.
    const host = { hostOffset: this.hostOffset(first.entry, offset), zero: false };
    if (!this.differencing) return { offset, length: first.len, state: 'data', ...host };
    const run = (await this.bitmapRuns(first.block, first.entry, offset, first.len))[0];
    return run.present
      ? { offset, length: run.len, state: 'data', ...host }
      : { offset, length: run.len, state: 'unallocated' };
  }

  /** Writes the changed BAT sectors, once what they point at (and the footer past it) is on disk. */
  private async syncMetadata(): Promise<void> {
    await this.meta.run(async () => {
      if (this.dirty.size === 0) return;
      await this.writeFooter();
      // The blocks and the footer past them are on disk before the BAT points at them.
      await this.proto.flush();
      const sectors = [...this.dirty].sort((a, b) => a - b);
      this.dirty.clear();
      for (let i = 0; i < sectors.length; ) {
        // Neighbouring sectors go out in one write.
        let n = 1;
        while (i + n < sectors.length && sectors[i + n] === sectors[i] + n) n++;
        await this.proto.write(this.batBytes(sectors[i], n), this.layout.tableOffset + sectors[i] * L.SECTOR_SIZE);
        i += n;
      }
    });
  }

  /** BAT sectors `first`..`first + count - 1` as stored (the last one cut at the table's end). */
  private batBytes(first: number, count: number): Uint8Array {
    const from = first * BAT_SECTOR_ENTRIES;
    const to = Math.min(this.layout.bat.length, (first + count) * BAT_SECTOR_ENTRIES);
    const out = new Uint8Array((to - from) * 4);
    const v = new DataView(out.buffer);
    for (let i = from; i < to; i++) v.setUint32((i - from) * 4, this.layout.bat[i]);
    return out;
  }

  /** Whole-image work: no request is between allocating a block and writing it. */
  async flush(): Promise<void> {
    await this.ranges.all(() => this.syncMetadata());
    await this.proto.flush();
  }

  async close(): Promise<void> {
    if (!this.readOnly) await this.flush();
  }

  /** qemu-img shows the block size as the cluster size, and nothing format-specific. */
  async info(): Promise<FormatInfo> {
    return { clusterSize: this.blockSize };
  }
}

const roundUp = (n: number) => Math.ceil(n / L.SECTOR_SIZE) * L.SECTOR_SIZE;
