/**
 * An open VHDX image: payload blocks mapped by the BAT, read, written,
 * checked and grown.
 *
 * Write order keeps a crash harmless, for Platter and for QEMU: a new block
 * goes past the end of the file (1 MiB aligned) and its data is written
 * before the BAT points at it; BAT changes collect in memory and, at a flush,
 * go through the log as the spec (and QEMU's vhdx_log_write_and_flush)
 * prescribes: data flushed; a new log GUID in the headers; one log entry with
 * the changed BAT pages, flushed; the pages written in place, flushed; the
 * log GUID cleared. A crash before the entry is complete leaves the old BAT
 * (and an unused block at the end); after it, opening replays the entry.
 * Unlike QEMU, which does all this for every new block, Platter does it once
 * per flush for every page changed since the last.
 */
import type {
  Checkable,
  CheckReport,
  ClusterPlacement,
  FormatImage,
  FormatInfo,
  HasBacking,
  LayerExtent,
  PlacesClusters,
  RepairMode,
  Resizable,
  ResizePreallocation,
} from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { Mutex, RangeLock } from '../../image/locks.js';
import type { Protocol } from '../../io/protocol.js';
import { Bat, batGeometry, bitmapIndex, payloadIndex } from './bat.js';
import { checkVhdx } from './check.js';
import { newGuid } from './guid.js';
import type { HeaderWriter } from './headers-update.js';
import * as L from './limits.js';
import { buildEntry, maxSectorsPerEntry } from './log.js';
import { parentFileName, type VhdxMetadata } from './metadata.js';
import { serializeRegionTable, type FileRegions, type RegionTable } from './region.js';

interface Backing {
  read(buf: Uint8Array, offset: number): Promise<void>;
  size: number;
}

export interface VhdxParts {
  proto: Protocol;
  headers: HeaderWriter;
  table: RegionTable;
  meta: VhdxMetadata;
  bat: Bat;
  regions: FileRegions;
  readOnly: boolean;
  /** The log was replayed into the file when opening (check counts it as fixed). */
  logReplayed: boolean;
  /** A dirty log is replayed in memory only (read-only open). */
  logPending: boolean;
  /** BAT problems found at open (only when opened for check). */
  problems: string[];
  /** The region table's first copy is damaged and the second is in use (check -r all mends the first). */
  damagedRegionTable?: { why: string; good: Uint8Array };
  fileSize: number;
}

/** A run of sectors of a partially present block: in this file, or in the parent. */
interface SectorRun {
  at: number;
  len: number;
  here: boolean;
}

/** A whole 4 KiB sector write that goes through the log. */
interface SectorWrite {
  fileOffset: number;
  data: Uint8Array;
}

const S = L.LOG_SECTOR_SIZE;
const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

export class VhdxImage implements FormatImage, Checkable, HasBacking, PlacesClusters, Resizable {
  size: number;
  readonly readOnly: boolean;
  readonly proto: Protocol;
  private bat: Bat;
  private readonly meta: VhdxMetadata;
  private readonly parts: VhdxParts;
  /** Where the next new block goes: past everything in the file, 1 MiB aligned. */
  private fileEnd: number;
  /** The end of the last block placed by other threads (see clusterPlacement). */
  private placedEnd = 0;
  /** Guest I/O holds its blocks, so a block's first write (which allocates it) is never overtaken. */
  private readonly ranges = new RangeLock();
  /** Header and log writes, one at a time. */
  private readonly metaLock = new Mutex();
  /** The header update the spec wants before the first visible change (a new data write GUID). */
  private firstWrite?: Promise<void>;
  private logSequence = 1n;
  private backing?: Backing;

  constructor(parts: VhdxParts) {
    this.parts = parts;
    this.proto = parts.proto;
    this.readOnly = parts.readOnly;
    this.meta = parts.meta;
    this.bat = parts.bat;
    this.size = parts.meta.diskSize;
    this.fileEnd = roundUp(parts.fileSize, L.OBJECT_ALIGNMENT);
  }

  private get bs(): number {
    return this.meta.blockSize;
  }

  get backingRef() {
    if (!this.meta.parent) return undefined;
    const filename = parentFileName(this.meta.parent);
    return filename === undefined ? undefined : { filename, format: 'vhdx' };
  }

  setBacking(backing: Backing | undefined): void {
    this.backing = backing;
  }

  /** State and file offset of payload block `b`. */
  private block(b: number): { state: number; offset: number } {
    const i = payloadIndex(this.bat.geometry, b);
    return { state: this.bat.state(i), offset: this.bat.offset(i) };
  }

  private blocksOf(offset: number, length: number): [number, number] {
    return [Math.floor(offset / this.bs), Math.floor((offset + Math.max(length, 1) - 1) / this.bs)];
  }

  /** Pieces of [offset, offset + length) cut at block boundaries. */
  private *pieces(offset: number, length: number): Generator<{ at: number; len: number; b: number; within: number }> {
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const b = Math.floor(at / this.bs);
      const within = at % this.bs;
      const len = Math.min(this.bs - within, end - at);
      yield { at, len, b, within };
      at += len;
    }
  }

  /** Whether a block in `state` falls through to the parent (differencing disks only). */
  private fromParent(state: number): boolean {
    return this.meta.hasParent && state !== L.PAYLOAD_ZERO && state !== L.PAYLOAD_FULLY_PRESENT;
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.ranges.hold(...this.blocksOf(offset, buf.length), async () => {
      for (const p of this.pieces(offset, buf.length)) {
        const part = buf.subarray(p.at - offset, p.at - offset + p.len);
        const { state, offset: host } = this.block(p.b);
        if (state === L.PAYLOAD_FULLY_PRESENT) await this.proto.read(part, host + p.within);
        else if (state === L.PAYLOAD_PARTIALLY_PRESENT) await this.readPartial(part, p.at, p.b, host);
        else if (this.fromParent(state)) await this.readParent(part, p.at);
        else part.fill(0);
      }
    });
  }

  private corrupt(what: string): BlockError {
    return new BlockError('Corrupt', `VHDX ${what}`, { op: 'read' });
  }

  private async readParent(part: Uint8Array, at: number): Promise<void> {
    part.fill(0);
    if (!this.backing || at >= this.backing.size) return;
    await this.backing.read(part.subarray(0, Math.min(part.length, this.backing.size - at)), at);
  }

  /**
   * Runs of sectors of block `b` from guest offset `at` (`length` bytes):
   * present in this file (bit set in the block's sector bitmap) or not.
   */
  private async sectorRuns(at: number, length: number, b: number): Promise<SectorRun[]> {
    const g = this.bat.geometry;
    const bi = bitmapIndex(g, b);
    if (this.bat.state(bi) !== L.SB_PRESENT) {
      throw this.corrupt(`payload block ${b} is partially present but has no sector bitmap`);
    }
    const bitmapAt = this.bat.offset(bi);
    if (bitmapAt < L.HEADER_SECTION_SIZE || bitmapAt + L.BITMAP_BLOCK_SIZE > this.parts.fileSize) {
      throw this.corrupt(`sector bitmap of payload block ${b} (offset ${bitmapAt}) is outside the file`);
    }
    const lss = this.meta.logicalSectorSize;
    const blockStart = b * this.bs;
    // Sectors s0..s1-1 of the block cover the range; bit k of the chunk's bitmap is sector k of the chunk.
    const s0 = Math.floor((at - blockStart) / lss);
    const s1 = Math.ceil((at + length - blockStart) / lss);
    const first = (b % g.chunkRatio) * (this.bs / lss) + s0;
    const byte0 = Math.floor(first / 8);
    const bits = new Uint8Array(Math.ceil((first + s1 - s0) / 8) - byte0);
    await this.proto.read(bits, bitmapAt + byte0);
    const runs: SectorRun[] = [];
    for (let k = s0; k < s1; k++) {
      const bit = first + (k - s0) - byte0 * 8;
      const here = ((bits[bit >> 3] >> (bit & 7)) & 1) === 1;
      const from = Math.max(at, blockStart + k * lss);
      const to = Math.min(at + length, blockStart + (k + 1) * lss);
      const last = runs[runs.length - 1];
      if (last && last.here === here) last.len += to - from;
      else runs.push({ at: from, len: to - from, here });
    }
    return runs;
  }

  private async readPartial(part: Uint8Array, at: number, b: number, host: number): Promise<void> {
    if (!this.meta.hasParent) {
      throw this.corrupt(`payload block ${b} is partially present in an image without a parent`);
    }
    for (const r of await this.sectorRuns(at, part.length, b)) {
      const sub = part.subarray(r.at - at, r.at - at + r.len);
      if (r.here) await this.proto.read(sub, host + (r.at % this.bs));
      else await this.readParent(sub, r.at);
    }
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    const end = Math.min(offset + length, this.size);
    const first = this.pieces(offset, end - offset).next().value!;
    const { state, offset: host } = this.block(first.b);
    if (state === L.PAYLOAD_PARTIALLY_PRESENT && this.meta.hasParent) {
      const r = (await this.sectorRuns(offset, first.len, first.b))[0];
      return r.here
        ? { offset, length: r.len, state: 'data', hostOffset: host + first.within }
        : { offset, length: r.len, state: 'unallocated' };
    }
    const kind = (s: number) => (s === L.PAYLOAD_FULLY_PRESENT ? 'data' : this.fromParent(s) ? 'unallocated' : 'zero');
    const k = kind(state);
    let len = first.len;
    // Following blocks of the same kind join the extent (data only while the file offsets follow on).
    for (let b = first.b + 1; offset + len < end; b++) {
      const next = this.block(b);
      if (next.state === L.PAYLOAD_PARTIALLY_PRESENT || kind(next.state) !== k) break;
      if (k === 'data' && next.offset !== host + (b - first.b) * this.bs) break;
      len += Math.min(this.bs, end - offset - len);
    }
    if (k !== 'data') return { offset, length: len, state: k };
    return { offset, length: len, state: k, hostOffset: host + first.within };
  }

  private checkWritable(): void {
    if (this.readOnly) throw new BlockError('Io', 'the image is open read-only', { op: 'write' });
  }

  /** The spec: a new data write GUID before the first change a reader could see. */
  private beforeFirstChange(): Promise<void> {
    this.checkWritable();
    this.firstWrite ??= this.metaLock.run(() => this.parts.headers.update({ newDataGuid: true }));
    return this.firstWrite;
  }

  /**
   * Writes to stored blocks go straight to the file, several at once even
   * in one block (a whole-block zero that races with them overlaps their
   * bytes, so either order is right); only a block's allocation holds it,
   * so it happens once.
   */
  async write(buf: Uint8Array, offset: number): Promise<void> {
    await this.beforeFirstChange();
    const pending: Promise<void>[] = [];
    for (const p of this.pieces(offset, buf.length)) {
      const data = buf.subarray(p.at - offset, p.at - offset + p.len);
      pending.push(this.writePiece(data, p.b, p.within));
    }
    await Promise.all(pending);
  }

  private async writePiece(data: Uint8Array, b: number, within: number): Promise<void> {
    const stored = this.block(b);
    if (stored.state === L.PAYLOAD_FULLY_PRESENT) return this.proto.write(data, stored.offset + within);
    await this.ranges.hold(b, b, async () => {
      const { state, offset: host } = this.block(b);
      if (state === L.PAYLOAD_FULLY_PRESENT) await this.proto.write(data, host + within);
      else await this.allocate(b, data, within);
    });
  }

  /**
   * Gives block `b` a new place at the end of the file holding `data` at
   * `within` and zeros elsewhere (the new place reads as zeros; up to a
   * sector of zeros at its end, past the data, makes the file cover the whole
   * block), then points the BAT at it. The caller holds the block.
   */
  private async allocate(b: number, data: Uint8Array, within: number): Promise<void> {
    const host = this.fileEnd;
    this.fileEnd += this.bs;
    await this.proto.write(data, host + within);
    const tail = Math.min(this.meta.logicalSectorSize, this.bs - within - data.length);
    if (tail > 0) await this.proto.write(new Uint8Array(tail), host + this.bs - tail);
    this.bat.set(payloadIndex(this.bat.geometry, b), L.PAYLOAD_FULLY_PRESENT, host);
  }

  /** Whether block `b` has data of its own in the file (fully or partly present). */
  private stored(b: number): boolean {
    const { state } = this.block(b);
    return state === L.PAYLOAD_FULLY_PRESENT || state === L.PAYLOAD_PARTIALLY_PRESENT;
  }

  /**
   * Placed copies into a dynamic VHDX with no data yet and no parent
   * (PlacesClusters): other threads write blocks' data past the end of the
   * file, one block after another like any new block, and `map` points the
   * BAT at them. Nothing else allocates meanwhile, so a copy reserves all it could
   * need at once and gives back the end it did not use.
   */
  clusterPlacement(): ClusterPlacement | undefined {
    if (this.meta.hasParent || this.meta.leaveBlocksAllocated) return undefined;
    for (let b = 0; b < this.bat.geometry.dataBlocks; b++) if (this.stored(b)) return undefined;
    const bs = this.bs;
    return {
      clusterSize: bs,
      hostStride: bs,
      appendOnly: true,
      reserve: async (count) => {
        await this.beforeFirstChange();
        const host = this.fileEnd;
        this.fileEnd += count * bs;
        return host;
      },
      unreserve: async (host, count) => {
        if (host + count * bs === this.fileEnd) this.fileEnd = host;
      },
      map: async (first, host, count) => {
        for (let k = 0; k < count; k++) {
          const b = first + k;
          if (!(b < this.bat.geometry.dataBlocks) || this.stored(b)) {
            throw new BlockError('InvalidArgument', `block ${b} is mapped already or out of range`);
          }
          this.bat.set(payloadIndex(this.bat.geometry, b), L.PAYLOAD_FULLY_PRESENT, host + k * bs);
        }
        this.placedEnd = Math.max(this.placedEnd, host + count * bs);
      },
    };
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    return this.zero(offset, length, mayUnmap);
  }

  discard(offset: number, length: number): Promise<void> {
    return this.zero(offset, length, true);
  }

  /**
   * Whole blocks of a dynamic image become ZERO blocks (QEMU writes that
   * state with a null offset: Hyper-V refuses any other); their old place
   * is left unused. A fixed image keeps its blocks and zeroes them in place.
   */
  private async zero(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    await this.beforeFirstChange();
    await this.ranges.hold(...this.blocksOf(offset, length), async () => {
      for (const p of this.pieces(offset, length)) {
        const { state, offset: host } = this.block(p.b);
        const whole = p.within === 0 && (p.len === this.bs || p.at + p.len === this.size);
        if (whole && !this.meta.leaveBlocksAllocated && (mayUnmap || state !== L.PAYLOAD_FULLY_PRESENT)) {
          if (state !== L.PAYLOAD_ZERO) this.bat.set(payloadIndex(this.bat.geometry, p.b), L.PAYLOAD_ZERO, 0);
        } else if (state === L.PAYLOAD_FULLY_PRESENT) {
          // Written zeros, not a hole: a fixed image must not come to rely on
          // holes (see README, Windows and sparse VHDX).
          await this.proto.write(new Uint8Array(p.len), host + p.within);
        }
      }
    });
  }

  /**
   * Writes the changed BAT pages (and `extra` sectors) through the log. The
   * pages are copied before the data flush, so every entry they hold points
   * at data already on disk.
   */
  async syncMetadata(extra: readonly SectorWrite[] = []): Promise<void> {
    await this.metaLock.run(async () => {
      if (!this.bat.hasChanges && !extra.length) return;
      const pages = this.bat.takeChanges();
      const batAt = this.parts.table.bat.offset;
      const writes = [...pages.map((p) => ({ fileOffset: batAt + p * S, data: this.bat.page(p) })), ...extra];
      try {
        const { logLength } = this.parts.headers.header;
        const max = Math.min(L.QEMU_MAX_LOG_DESCRIPTORS, maxSectorsPerEntry(logLength));
        // A log of 0 bytes (damaged; QEMU's writes fail there too) has no room for any entry.
        if (max < 1) {
          throw new BlockError('Corrupt', `the VHDX log is ${logLength} bytes long, too short for any entry: the image can only be read`);
        }
        // Placed blocks end in a hole where their data does: the file must still cover them (as allocate's do).
        if ((await this.proto.size()) < this.placedEnd) await this.proto.truncate(this.placedEnd);
        await this.proto.flush();
        for (let i = 0; i < writes.length; i += max) await this.logged(writes.slice(i, i + max));
      } catch (err) {
        this.bat.restore(pages);
        throw err;
      }
    });
  }

  /** One log cycle: log GUID set, entry written and flushed, sectors written in place and flushed, log GUID cleared. */
  private async logged(writes: readonly SectorWrite[]): Promise<void> {
    const headers = this.parts.headers;
    const logGuid = newGuid();
    await headers.update({ logGuid });
    const fileSize = await this.proto.size();
    const entry = buildEntry({ sequence: this.logSequence++, logGuid, tail: 0, fileSize, writes });
    await this.proto.write(entry, headers.header.logOffset);
    await this.proto.flush();
    for (let i = 0; i < writes.length; ) {
      // Sectors that follow each other go out in one write.
      let j = i + 1;
      while (j < writes.length && writes[j].fileOffset === writes[j - 1].fileOffset + S) j++;
      const run = new Uint8Array((j - i) * S);
      for (let k = i; k < j; k++) run.set(writes[k].data, (k - i) * S);
      await this.proto.write(run, writes[i].fileOffset);
      i = j;
    }
    await this.proto.flush();
    await headers.update({ logGuid: new Uint8Array(16) });
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.syncMetadata();
    await this.proto.flush();
  }

  async close(): Promise<void> {
    if (!this.readOnly) await this.syncMetadata();
  }

  async info(): Promise<FormatInfo> {
    return { clusterSize: this.bs, dirty: this.parts.logPending };
  }

  /** See check.ts; whole-image work, like QEMU's. */
  check(repair: RepairMode, log: (line: string) => void): Promise<CheckReport> {
    return this.ranges.all(() =>
      checkVhdx(this.parts, repair, log, async (good) => {
        this.checkWritable();
        await this.metaLock.run(async () => {
          await this.proto.write(good, L.REGION_TABLE1_OFFSET);
          await this.proto.flush();
        });
        this.parts.damagedRegionTable = undefined;
      }),
    );
  }

  /**
   * Grows the disk (QEMU 7.2 cannot resize VHDX at all) within the room the
   * BAT region has; the new size and BAT entries go through the log
   * together, so a crash leaves the old size or the new one.
   */
  /**
   * Gives a grown BAT a region of its own past the end of the file, as the
   * old one has no room (QEMU cannot grow a VHDX at all). The region table
   * sits in the header section, which the log cannot reach, so the switch is
   * its two copies written in turn: the new BAT is whole and flushed before
   * the first copy names it; until the second copy is written, the first
   * (which QEMU reads, and Platter first) already does. The old BAT region
   * becomes unused space.
   */
  private async moveBat(bat: Bat): Promise<void> {
    // Entries not yet written may point at data not yet flushed.
    await this.proto.flush();
    const region = { offset: this.fileEnd, length: roundUp(bat.bytes.length, L.OBJECT_ALIGNMENT) };
    this.fileEnd += region.length;
    await this.proto.truncate(this.fileEnd);
    await this.proto.write(bat.bytes, region.offset);
    await this.proto.flush();
    const table = serializeRegionTable({ bat: region, metadata: this.parts.table.metadata });
    await this.metaLock.run(async () => {
      for (const at of [L.REGION_TABLE1_OFFSET, L.REGION_TABLE2_OFFSET]) {
        await this.proto.write(table, at);
        await this.proto.flush();
      }
    });
    this.parts.table.bat = region;
    this.parts.regions.add(region.offset, region.length, 'BAT');
    // Every entry is in the new region now.
    bat.takeChanges();
  }

  async resize(size: number, opts: { prealloc: ResizePreallocation }): Promise<void> {
    if (opts.prealloc !== 'off') {
      throw new BlockError('Unsupported', `Unsupported preallocation mode: ${opts.prealloc}`);
    }
    const lss = this.meta.logicalSectorSize;
    const newSize = roundUp(size, lss);
    if (newSize < this.size) throw new BlockError('Unsupported', 'VHDX images cannot be shrunk');
    if (newSize > L.MAX_DISK_SIZE) throw new BlockError('InvalidArgument', 'Image size too large; max of 64TB');
    await this.beforeFirstChange();
    await this.ranges.all(async () => {
      const old = this.bat.geometry;
      const g = batGeometry(newSize, this.bs, lss, false);
      // The old last block's bytes past the old end become visible: they must read as zeros.
      const lastOld = Math.floor((this.size - 1) / this.bs);
      const tail = this.size % this.bs;
      if (this.size > 0 && tail && this.block(lastOld).state === L.PAYLOAD_FULLY_PRESENT) {
        const host = this.block(lastOld).offset;
        await this.proto.write(new Uint8Array(Math.min(this.bs, newSize - lastOld * this.bs) - tail), host + tail);
      }
      const bytes = new Uint8Array(g.entries * 8);
      bytes.set(this.bat.bytes.subarray(0, old.entries * 8));
      const bat = new Bat(g, bytes);
      for (const p of this.bat.takeChanges()) bat.restore([p]);
      const fixed = this.meta.leaveBlocksAllocated;
      for (let i = old.entries; i < g.entries; i++) bat.set(i, 0, 0);
      for (let b = old.dataBlocks; b < g.dataBlocks; b++) {
        if (!fixed) continue;
        const host = this.fileEnd;
        this.fileEnd += this.bs;
        bat.set(payloadIndex(g, b), L.PAYLOAD_FULLY_PRESENT, host);
      }
      if (fixed && (await this.proto.size()) < this.fileEnd) await this.proto.truncate(this.fileEnd, 'full');
      if (g.entries * 8 > this.parts.table.bat.length) await this.moveBat(bat);
      this.bat = bat;
      const at = this.meta.diskSizeOffset;
      const sectorAt = at - (at % S);
      const sector = new Uint8Array(S);
      await this.proto.read(sector, sectorAt);
      new DataView(sector.buffer).setBigUint64(at - sectorAt, BigInt(newSize), true);
      await this.syncMetadata([{ fileOffset: sectorAt, data: sector }]);
      this.size = newSize;
      this.meta.diskSize = newSize;
    });
  }
}
