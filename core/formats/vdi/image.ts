/**
 * An open VDI image: guest blocks of 1 MiB, each mapped by the block map to a
 * data block (numbered from the data offset) or to nothing (reads as zeros).
 *
 * Write order keeps a crash harmless for Platter and for QEMU, which puts a
 * new block at index `blocks allocated`: a new block's data is written (and
 * flushed) before the map points at it, and the header's count, written
 * before the map, never drops below an index the map uses. New map entries
 * stay in memory until a flush, then go out a sector at a time.
 */
import type {
  Checkable,
  CheckReport,
  Compactable,
  CompactProgress,
  FormatImage,
  FormatInfo,
  LayerExtent,
  RepairMode,
  Resizable,
  ResizePreallocation,
} from '../../image/driver.js';
import { BlockError, throwIfAborted } from '../../image/errors.js';
import { Mutex, RangeLock } from '../../image/locks.js';
import type { Protocol } from '../../io/protocol.js';
import { isZero } from '../../io/zero.js';
import { BlockMap, writeMapSectors } from './bmap.js';
import { checkVdi } from './check.js';
import { owners, packPlan, type BlockMove } from './compact.js';
import { vdiDiskSize } from './create.js';
import { bmapBytes, serializeHeader, type VdiHeader } from './header.js';
import * as L from './limits.js';

const BS = L.BLOCK_SIZE;
/** Blocks copied between two flushes when moving blocks: fewer fsyncs, same order. */
const MOVE_BATCH = 16;

export class VdiImage implements FormatImage, Resizable, Checkable, Compactable {
  size: number;
  /** The host index the next new block takes: past every index in use, never below the header's count. */
  private nextIndex: number;
  /**
   * Guest I/O holds its blocks (so a block's first write, which allocates
   * it, is never overtaken); moving blocks (discard, compact, resize) holds them all.
   */
  private readonly ranges = new RangeLock();
  /** Metadata writes, one at a time. */
  private readonly meta = new Mutex();
  /**
   * File bytes from here on were never written before, except by the
   * allocation that took them: a new block there needs no zeros written
   * around its data, since the file's holes read as zeros. Raised when
   * blocks are moved (the only other writes past the blocks in use).
   */
  private freshFrom: number;

  constructor(
    readonly proto: Protocol,
    readonly header: VdiHeader,
    private bmap: BlockMap,
    readonly readOnly: boolean,
    fileSize: number,
  ) {
    this.freshFrom = fileSize;
    this.size = header.diskSize;
    let next = header.blocksAllocated;
    for (const e of bmap.entries) if (L.isAllocated(e) && e < header.blocksInImage && e >= next) next = e + 1;
    this.nextIndex = next;
  }

  get isStatic(): boolean {
    return this.header.imageType === L.TYPE_STATIC;
  }

  private hostOffset(entry: number): number {
    return this.header.offsetData + entry * BS;
  }

  /** The entry of guest block `g`, refused if it points outside the image's blocks. */
  private entry(g: number): number {
    const e = this.bmap.get(g);
    if (L.isAllocated(e) && e >= this.header.blocksInImage) {
      const blocks = this.header.blocksInImage;
      throw new BlockError('Corrupt', `block map entry ${g} points to block ${e}, beyond the ${blocks} blocks of the image`);
    }
    return e;
  }

  /**
   * Splits [offset, offset + length) into runs: unallocated blocks together,
   * allocated blocks together while their data blocks follow each other.
   */
  private *runs(offset: number, length: number): Generator<{ at: number; len: number; entry: number }> {
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const g = Math.floor(at / BS);
      const first = this.entry(g);
      let len = Math.min(BS - (at % BS), end - at);
      for (let next = g + 1; at + len < end; next++) {
        const e = this.entry(next);
        const same = L.isAllocated(first) ? e === first + (next - g) : !L.isAllocated(e);
        if (!same) break;
        len += Math.min(BS, end - at - len);
      }
      yield { at, len, entry: first };
      at += len;
    }
  }

  /** The first and last guest block of a byte range. */
  private blocksOf(offset: number, length: number): [number, number] {
    return [Math.floor(offset / BS), Math.floor((offset + Math.max(length, 1) - 1) / BS)];
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.ranges.hold(...this.blocksOf(offset, buf.length), async () => {
      for (const r of this.runs(offset, buf.length)) {
        const part = buf.subarray(r.at - offset, r.at - offset + r.len);
        if (L.isAllocated(r.entry)) await this.proto.read(part, this.hostOffset(r.entry) + (r.at % BS));
        else part.fill(0);
      }
    });
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.ranges.hold(...this.blocksOf(offset, buf.length), () => this.writeHeld(buf, offset));
  }

  private async writeHeld(buf: Uint8Array, offset: number): Promise<void> {
    const end = offset + buf.length;
    for (let at = offset; at < end; ) {
      const g = Math.floor(at / BS);
      const e = this.entry(g);
      if (L.isAllocated(e)) {
        const len = Math.min(BS - (at % BS), end - at);
        await this.proto.write(buf.subarray(at - offset, at - offset + len), this.hostOffset(e) + (at % BS));
        at += len;
        continue;
      }
      // A run of blocks never written: they get consecutive new data blocks.
      const last = Math.ceil(end / BS);
      let count = 1;
      while (g + count < last && !L.isAllocated(this.entry(g + count))) count++;
      at = await this.allocate(g, count, buf, offset, at, end);
    }
  }

  /**
   * Gives guest blocks g..g+count-1 new data blocks, filled from `buf` (which
   * holds guest bytes from `offset`; this part of the write runs from `at` to
   * `end`) and zeros; returns where the write got to.
   */
  private async allocate(g: number, count: number, buf: Uint8Array, offset: number, at: number, end: number): Promise<number> {
    const blocks = this.header.blocksInImage;
    if (this.nextIndex + count > blocks) {
      throw new BlockError('Corrupt', `no room for a new block: ${this.nextIndex} of ${blocks} are in use; see check`);
    }
    const first = this.nextIndex;
    this.nextIndex += count;
    const runStart = g * BS;
    const runEnd = Math.min((g + count) * BS, end);
    const whole = at === runStart && runEnd === (g + count) * BS;
    // Whole blocks go straight from the caller's buffer; a partial one is
    // padded with zeros, unless its place was never written (then the rest
    // reads as zeros already, and syncMetadata makes the file cover it).
    let data = buf.subarray(at - offset, runEnd - offset);
    let host = this.hostOffset(first) + (at - runStart);
    if (!whole && this.hostOffset(first) < this.freshFrom) {
      data = new Uint8Array(count * BS);
      data.set(buf.subarray(at - offset, runEnd - offset), at - runStart);
      host = this.hostOffset(first);
    }
    await this.proto.write(data, host);
    for (let i = 0; i < count; i++) this.bmap.set(g + i, first + i);
    return runEnd;
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    return this.zero(offset, length, mayUnmap);
  }

  /** A discard reads back as zeros here: whole blocks are dropped, the rest zeroed. */
  discard(offset: number, length: number): Promise<void> {
    return this.zero(offset, length, true);
  }

  private async zero(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    const drop: number[] = [];
    await this.ranges.hold(...this.blocksOf(offset, length), async () => {
      const end = offset + length;
      for (let at = offset; at < end; ) {
        const g = Math.floor(at / BS);
        const len = Math.min(BS - (at % BS), end - at);
        const e = this.entry(g);
        // The last block's tail past the guest's end counts as covered.
        const whole = at % BS === 0 && (len === BS || at + len === this.size);
        if (!L.isAllocated(e)) {
          // Reads as zeros already.
        } else if (whole && mayUnmap && !this.isStatic) {
          drop.push(g);
        } else if (this.isStatic) {
          // A static image keeps its blocks; its file may still free the range.
          await this.proto.writeZeroes(this.hostOffset(e) + (at % BS), len, mayUnmap);
        } else {
          // Written zeros, not a file hole: QEMU maps a dynamic block as data without asking the file, and so must we.
          await this.proto.write(new Uint8Array(len), this.hostOffset(e) + (at % BS));
        }
        at += len;
      }
    });
    if (drop.length) await this.ranges.all(() => this.dropBlocks(drop));
  }

  /**
   * Marks guest blocks discarded and packs the file. Their map entries are
   * on disk before any data block is reused.
   */
  private async dropBlocks(blocks: readonly number[], progress?: CompactProgress): Promise<void> {
    for (const g of blocks) if (L.isAllocated(this.bmap.get(g))) this.bmap.set(g, L.DISCARDED);
    await this.syncMetadata();
    await this.pack(progress);
  }

  /**
   * Moves the highest data blocks into the free slots below them, then
   * truncates the file. Each batch: copy, flush, repoint, flush; the old
   * slots are free only once nothing points at them. It is not cancelled
   * half way: until every block is down, the header's count must stay above
   * the highest block in use, which qemu-img check calls a mismatch.
   */
  private async pack(progress?: CompactProgress): Promise<void> {
    const { moves, used } = packPlan(owners(this.bmap.entries, this.nextIndex));
    await this.moveBlocks(moves, progress);
    // Nothing points past `used` now: the count drops, then the file.
    this.nextIndex = used;
    await this.meta.run(() => this.writeHeader());
    await this.proto.flush();
    const end = this.hostOffset(used);
    if ((await this.proto.size()) > end) await this.proto.truncate(end);
  }

  /** Copies data blocks and repoints their guest blocks, in batches: copy, flush, repoint, sync. */
  private async moveBlocks(moves: readonly BlockMove[], progress?: CompactProgress): Promise<void> {
    const block = new Uint8Array(BS);
    for (let i = 0; i < moves.length; i += MOVE_BATCH) {
      const batch = moves.slice(i, i + MOVE_BATCH);
      for (const m of batch) {
        await this.proto.read(block, this.hostOffset(m.from));
        await this.proto.write(block, this.hostOffset(m.to));
      }
      await this.proto.flush();
      for (const m of batch) this.bmap.set(m.guest, m.to);
      await this.syncMetadata();
      progress?.(i + batch.length, moves.length);
    }
    // Moved blocks may have landed past what was written before.
    this.freshFrom = Math.max(this.freshFrom, await this.proto.size());
  }

  private async writeHeader(): Promise<void> {
    this.header.blocksAllocated = this.nextIndex;
    await this.proto.write(serializeHeader(this.header), 0);
  }

  /**
   * Writes the header and the changed map sectors. Data the new entries
   * point at is flushed first; the header's count goes before the map.
   */
  async syncMetadata(): Promise<void> {
    await this.meta.run(async () => {
      if (!this.bmap.hasChanges && this.header.blocksAllocated === this.nextIndex) return;
      const sectors = this.bmap.takeChanges();
      try {
        // New blocks' unwritten tails may lie past the end of the file: it covers them before the map points there.
        const end = this.hostOffset(this.nextIndex);
        if ((await this.proto.size()) < end) await this.proto.truncate(end);
        await this.proto.flush();
        await this.writeHeader();
        await writeMapSectors(this.proto, this.header.offsetBmap, sectors);
      } catch (err) {
        this.bmap.restore(sectors);
        throw err;
      }
    });
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    const r = this.runs(offset, length).next().value!;
    // Never written and discarded blocks alike read as zeros (QEMU maps both as zero).
    if (!L.isAllocated(r.entry)) return { offset, length: r.len, state: 'zero' };
    // As QEMU maps them: a dynamic image's stored block is data whatever the
    // file holds there (a hole in a new block's unwritten part); a static
    // image's preallocated blocks read as zeros where the file has holes.
    const hostOffset = this.hostOffset(r.entry) + (offset % BS);
    return { offset, length: r.len, state: 'data', hostOffset, zero: this.isStatic ? undefined : false };
  }

  async flush(): Promise<void> {
    await this.syncMetadata();
    await this.proto.flush();
  }

  async close(): Promise<void> {
    if (!this.readOnly) await this.syncMetadata();
  }

  async info(): Promise<FormatInfo> {
    return { clusterSize: BS };
  }

  check(repair: RepairMode, log: (line: string) => void): Promise<CheckReport> {
    return this.ranges.all(async () => checkVdi(this.header, this.bmap.entries, repair, log));
  }

  compact(opts: { signal?: AbortSignal; progress?: CompactProgress }): Promise<{ before: number; after: number }> {
    if (this.isStatic) {
      throw new BlockError('Unsupported', 'static VDI images are fully allocated by design; only dynamic ones can be compacted');
    }
    return this.ranges.all(async () => {
      const before = await this.proto.size();
      // Stored blocks that read as zeros, found in file order.
      const zero: number[] = [];
      const owner = owners(this.bmap.entries, this.nextIndex);
      const block = new Uint8Array(BS);
      // Scanning is half the work, moving the other half.
      const total = this.nextIndex * 2;
      for (let i = 0; i < this.nextIndex; i++) {
        throwIfAborted(opts.signal);
        if (owner[i] < 0) continue;
        const ext = await this.proto.blockStatus(this.hostOffset(i), BS);
        let empty = !ext.data && ext.length >= BS;
        if (!empty) {
          await this.proto.read(block, this.hostOffset(i));
          empty = isZero(block);
        }
        if (empty) zero.push(owner[i]);
        opts.progress?.(i + 1, total);
      }
      const half = this.nextIndex;
      await this.dropBlocks(zero, (done, moves) => opts.progress?.(half + Math.round((done / moves) * half), total));
      await this.proto.flush();
      opts.progress?.(total, total);
      return { before, after: await this.proto.size() };
    });
  }

  /**
   * Grows the guest (QEMU cannot resize VDI at all). New entries go in the
   * room the block map has before the data, made first if it is too small;
   * they are written before the header counts them.
   */
  async resize(size: number, opts: { prealloc: ResizePreallocation }): Promise<void> {
    if (opts.prealloc !== 'off') throw new BlockError('Unsupported', `Unsupported preallocation mode: ${opts.prealloc}`);
    const newSize = vdiDiskSize(size);
    if (newSize < this.size) throw new BlockError('Unsupported', 'VDI images cannot be shrunk');
    const blocks = Math.ceil(newSize / BS);
    await this.ranges.all(async () => {
      await this.syncMetadata();
      if (bmapBytes(blocks) > this.header.offsetData - this.header.offsetBmap) await this.moveMap(blocks);
      const old = this.header.blocksInImage;
      if (blocks > old) {
        const entries = new Uint32Array(blocks);
        entries.set(this.bmap.entries);
        this.bmap.entries = entries;
        for (let g = old; g < blocks; g++) this.bmap.set(g, this.isStatic ? this.nextIndex++ : L.UNALLOCATED);
        // A static image's new blocks exist before anything points at them.
        if (this.isStatic) await this.proto.truncate(this.hostOffset(this.nextIndex));
        await this.meta.run(() => writeMapSectors(this.proto, this.header.offsetBmap, this.bmap.takeChanges()));
        await this.proto.flush();
      }
      this.header.blocksInImage = blocks;
      this.header.diskSize = newSize;
      await this.meta.run(() => this.writeHeader());
      this.size = newSize;
    });
  }

  /**
   * Makes room for a map of `blocks` entries (as VBoxManage does, by moving
   * data): the data blocks in the first slots move past the end, the map is
   * rewritten, renumbered, into the slots they left, and one header write
   * switches to the new layout. Until then the old map and header stand, so
   * a crash loses nothing (the old map sectors become unused space). One
   * window remains: when every block number of the old layout is taken, the
   * moved blocks get numbers past the old block count until the switch; a
   * crash there leaves the data whole (qemu-img reads it) but check, and
   * Platter's reads of those blocks, call the entries out of range.
   */
  private async moveMap(blocks: number): Promise<void> {
    const slots = Math.ceil(bmapBytes(blocks) / BS);
    const mapAt = this.header.offsetData;
    const dataAt = mapAt + slots * BS;
    if (dataAt > 0xffffffff) {
      throw new BlockError('Unsupported', 'the block map for that size would put the data past the 4 GiB a VDI header can point to');
    }
    // 1. The data blocks in the first slots move to the end (past those slots), like a pack in reverse.
    const moves: BlockMove[] = [];
    let dest = Math.max(this.nextIndex, slots);
    this.bmap.entries.forEach((e, guest) => {
      if (L.isAllocated(e) && e < slots) moves.push({ from: e, to: dest++, guest });
    });
    // Counted before anything points at them, so QEMU would never allocate them again.
    this.nextIndex = dest;
    await this.moveBlocks(moves);
    await this.syncMetadata();
    await this.proto.flush();
    // 2. The renumbered map, where nothing points any more.
    const map = new BlockMap(this.bmap.entries.map((e) => (L.isAllocated(e) ? e - slots : e)));
    await this.proto.write(map.encode(), mapAt);
    await this.proto.flush();
    // 3. The switch.
    this.header.offsetBmap = mapAt;
    this.header.offsetData = dataAt;
    this.bmap = map;
    this.nextIndex -= slots;
    await this.meta.run(() => this.writeHeader());
    await this.proto.flush();
  }
}
