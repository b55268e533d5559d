/**
 * The hosted sparse extent ("KDMV"): a grain directory of grain tables of
 * 32-bit grain sector numbers. Plain (monolithicSparse, twoGbMaxExtentSparse)
 * or compressed with grain markers (streamOptimized), with its tables either
 * after the header (as QEMU lays them out) or at the end of the file, named
 * by a footer (as VMware streams them; see stream.ts).
 */
import type { LayerExtent } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { Mutex } from '../../image/mutex.js';
import type { Protocol } from '../../io/protocol.js';
import type { WritableExtent } from './extent.js';
import * as L from './limits.js';
import { gdEntriesFor, parseSparseHeader, validateSparseHeader, type SparseHeader } from './sparse-header.js';
import { leBytes, leU32s } from './entries.js';
import { compressGrain, inflateGrain, readFooter, writeStreamTail } from './stream.js';

/** What lies under an extent: the parent image's bytes at the extent's guest range. */
export interface Below {
  /** Fills `buf` with the parent's bytes at extent offset `offset` (zeros where there is no parent). */
  read(buf: Uint8Array, offset: number): Promise<void>;
  /** True when there is a parent to show through unallocated grains. */
  readonly present: boolean;
}

export const NOTHING_BELOW: Below = { present: false, read: async (buf) => void buf.fill(0) };

type GrainState = { state: 'unallocated' | 'zero' } | { state: 'data'; sector: number };

export class SparseExtent implements WritableExtent {
  readonly length: number;
  readonly grainBytes: number;
  readonly compressed: boolean;
  private readonly zeroGrain: boolean;
  private readonly gtBytes: number;
  private readonly gts = new Map<number, Promise<Uint32Array>>();
  private readonly lock = new Mutex();
  /** Sector where the next grain (or table) goes. */
  private nextSector: number;
  /** streamOptimized as VMware writes it: tables are kept here and written at the end by close(). */
  private readonly tablesAtEnd: boolean;
  /** Where the tables at the end start; the first write cuts them off to append grains there. */
  private tailSector: number | undefined;
  private tailDirty = false;
  /**
   * Grains of a stream being filled by writes smaller than a grain (zero runs
   * split them; with out-of-order writes, several at once). Each is
   * compressed and appended once full, or at close.
   */
  private readonly pending = new Map<number, { data: Uint8Array; filled: number }>();
  private readonly partialLock = new Mutex();
  /** The last grain decompressed, for reads smaller than a grain. */
  private inflated: { sector: number; data: Uint8Array } | undefined;
  private closed = false;

  private constructor(
    readonly file: Protocol,
    readonly header: SparseHeader,
    private readonly gd: Uint32Array,
    private readonly rgd: Uint32Array | undefined,
    private fileSize: number,
    private readonly writable: boolean,
    private readonly below: Below,
    /** The sector the footer names the grain directory at (tables at the end), for the stream tail. */
    gdAtEndSector: number | undefined,
  ) {
    this.length = header.capacity * L.SECTOR;
    this.grainBytes = header.grainSectors * L.SECTOR;
    this.compressed = header.compressAlgorithm === L.COMPRESSION_DEFLATE;
    this.zeroGrain = (header.flags & L.FLAG_ZERO_GRAIN) !== 0;
    this.gtBytes = header.gtesPerGt * 4;
    this.tablesAtEnd = gdAtEndSector !== undefined;
    const fileSectors = Math.ceil(fileSize / L.SECTOR);
    if (this.tablesAtEnd) {
      // Tables (each after its marker sector) and the footer follow the last grain.
      let first = gdAtEndSector!;
      for (const s of gd) if (s !== 0 && s < first) first = s;
      this.tailSector = first - 1;
      this.nextSector = this.tailSector;
    } else {
      // Same as QEMU: grains are appended from the first grain boundary at or after the end.
      this.nextSector = this.compressed ? fileSectors : Math.ceil(fileSectors / header.grainSectors) * header.grainSectors;
    }
  }

  /** Opens a hosted sparse extent; every header field is checked before it is used. */
  static async open(file: Protocol, writable: boolean, below: Below = NOTHING_BELOW): Promise<SparseExtent> {
    const fileSize = await file.size();
    const first = new Uint8Array(L.SECTOR);
    await file.read(first, 0);
    let header = parseSparseHeader(first);
    let gdAtEnd: number | undefined;
    if (header.gdOffset === undefined) {
      header = await readFooter(file, fileSize);
      gdAtEnd = header.gdOffset;
    }
    validateSparseHeader(header, fileSize, writable);
    const entries = gdEntriesFor(header.capacity, header.grainSectors, header.gtesPerGt);
    const gd = await readDirectory(file, header.gdOffset!, entries, fileSize);
    const hasRgd = header.flags & L.FLAG_RGD && gdAtEnd === undefined;
    const rgd = hasRgd ? await readDirectory(file, header.rgdOffset, entries, fileSize) : undefined;
    return new SparseExtent(file, header, gd, rgd, fileSize, writable, below, gdAtEnd);
  }

  /** The grain table of directory entry `i` (undefined when it has none). */
  private table(i: number): Promise<Uint32Array> | undefined {
    const cached = this.gts.get(i);
    if (cached) return cached;
    const sector = this.gd[i];
    if (sector === 0) return undefined;
    const load = (async () => {
      if (sector * L.SECTOR + this.gtBytes > this.fileSize) {
        throw new BlockError('Corrupt', `grain table ${i} lies past the end of the file (truncated?)`);
      }
      if (this.tableOverlapsMetadata(sector)) {
        // Updating its entries would overwrite them.
        throw new BlockError('Corrupt', `grain table ${i} overlaps the extent's header, descriptor or grain directory`);
      }
      const bytes = new Uint8Array(this.gtBytes);
      await this.file.read(bytes, sector * L.SECTOR);
      return leU32s(bytes);
    })();
    if (!this.writable) this.evictTables();
    this.gts.set(i, load);
    load.catch(() => this.gts.delete(i));
    return load;
  }

  private tableOverlapsMetadata(sector: number): boolean {
    const h = this.header;
    const end = sector + Math.ceil(this.gtBytes / L.SECTOR);
    const overlaps = (start: number, sectors: number) => sector < start + sectors && start < end;
    const gdSectors = Math.ceil((this.gd.length * 4) / L.SECTOR);
    return (
      overlaps(0, 1) ||
      overlaps(h.descriptorOffset, h.descriptorSectors) ||
      overlaps(h.gdOffset!, gdSectors) ||
      (this.rgd !== undefined && overlaps(h.rgdOffset, gdSectors))
    );
  }

  /**
   * Keeps the table cache bounded. Tables of a stream's end are the only copy
   * until close and stay; others are on disk, and a writable extent drops
   * them only under the lock, when no change to one is under way.
   */
  private evictTables(): void {
    if ((this.tablesAtEnd && this.writable) || this.gts.size < L.MAX_CACHED_TABLES) return;
    for (const t of this.gts.keys()) {
      if (this.gts.size < L.MAX_CACHED_TABLES / 2) break;
      this.gts.delete(t);
    }
  }

  private async grain(g: number): Promise<GrainState> {
    const gtes = this.header.gtesPerGt;
    const gt = await this.table(Math.floor(g / gtes));
    const entry = gt ? gt[g % gtes] : 0;
    if (entry === 0) return { state: 'unallocated' };
    if (entry === L.GTE_ZEROED && this.zeroGrain) return { state: 'zero' };
    // Grains come after the header, descriptor and (in place) tables: one pointing there would let a
    // write overwrite them.
    if (entry < this.header.overhead) {
      throw new BlockError('Corrupt', `grain ${g} points into the extent's metadata (sector ${entry})`);
    }
    return { state: 'data', sector: entry };
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    const gb = this.grainBytes;
    const first = Math.floor(offset / gb);
    const st = await this.grain(first);
    let end = Math.min((first + 1) * gb, offset + length);
    // Neighbours in the same state (and, for data, right after each other in the file) join the run.
    const gtes = this.header.gtesPerGt;
    for (let g = first + 1; end < offset + length; g++) {
      const t = Math.floor(g / gtes);
      if (st.state === 'unallocated' && g % gtes === 0 && this.table(t) === undefined) {
        // A directory entry without a table: its whole range is unallocated.
        end = Math.min(end + gtes * gb, offset + length);
        g += gtes - 1;
        continue;
      }
      const next = await this.grain(g);
      if (next.state !== st.state) break;
      // Compressed grains join any run of data: they are read one by one anyway.
      const contiguous =
        next.state === 'data' && st.state === 'data' && next.sector === st.sector + (g - first) * this.header.grainSectors;
      if (next.state === 'data' && !this.compressed && !contiguous) break;
      end = Math.min(end + gb, offset + length);
    }
    const ext: LayerExtent = { offset, length: end - offset, state: st.state };
    if (st.state === 'data') {
      if (this.compressed) ext.compressed = true;
      else ext.hostOffset = st.sector * L.SECTOR + (offset % gb);
    }
    return ext;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    for (let at = 0; at < buf.length; ) {
      const ext = await this.blockStatus(offset + at, buf.length - at);
      const piece = buf.subarray(at, at + ext.length);
      if (ext.state !== 'data') piece.fill(0);
      else if (ext.hostOffset !== undefined) await this.file.read(piece, ext.hostOffset);
      else await this.readCompressed(piece, offset + at);
      at += ext.length;
    }
  }

  /** Reads a run of compressed grains, decompressing them in parallel. */
  private async readCompressed(piece: Uint8Array, offset: number): Promise<void> {
    const gb = this.grainBytes;
    const jobs: Promise<void>[] = [];
    for (let at = 0; at < piece.length; ) {
      const g = Math.floor((offset + at) / gb);
      const len = Math.min(piece.length - at, (g + 1) * gb - (offset + at));
      jobs.push(this.readGrain(piece.subarray(at, at + len), offset + at));
      at += len;
    }
    await Promise.all(jobs);
  }

  /** Reads within one compressed grain; the last one decompressed is kept for reads of its other parts. */
  private async readGrain(piece: Uint8Array, offset: number): Promise<void> {
    const st = await this.grain(Math.floor(offset / this.grainBytes));
    if (st.state !== 'data') return void piece.fill(0);
    let data = this.inflated?.sector === st.sector ? this.inflated.data : undefined;
    if (!data) {
      data = await inflateGrain(this.file, st.sector, this.grainBytes);
      if (piece.length < data.length) this.inflated = { sector: st.sector, data };
    }
    const from = offset % this.grainBytes;
    if (from + piece.length > data.length) {
      throw new BlockError('Corrupt', `the compressed grain at sector ${st.sector} holds only ${data.length} bytes`);
    }
    piece.set(data.subarray(from, from + piece.length));
  }

  private checkWritable(): void {
    if (!this.writable) throw new BlockError('InvalidArgument', 'this extent is read-only');
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable();
    if (this.compressed) return this.writeStream(buf, offset);
    for (let at = 0; at < buf.length; ) {
      const ext = await this.blockStatus(offset + at, buf.length - at);
      if (ext.state === 'data') {
        // A run of allocated grains, contiguous in the file, is one write.
        await this.file.write(buf.subarray(at, at + ext.length), ext.hostOffset!);
        at += ext.length;
      } else {
        at += await this.lock.run(() => this.allocate(buf.subarray(at), offset + at));
      }
    }
  }

  /**
   * Allocates the run of grains `buf` starts in, up to the first one that is
   * allocated (perhaps by a concurrent write since it was looked up), and
   * stores `buf`'s part of it. Partly written grains get the parent's bytes
   * (or zeros) around the new data. Order: the data, then the grain table
   * entries pointing at it, then directory entries for new tables. Returns
   * the bytes of `buf` stored.
   */
  private async allocate(buf: Uint8Array, offset: number): Promise<number> {
    const gb = this.grainBytes;
    const gs = this.header.grainSectors;
    const first = Math.floor(offset / gb);
    const last = Math.floor((offset + buf.length - 1) / gb);
    const states: GrainState[] = [];
    for (let g = first; g <= last; g++) {
      const st = await this.grain(g);
      if (st.state === 'data') break;
      states.push(st);
    }
    if (states.length === 0) return 0; // allocated meanwhile: the caller writes it in place
    this.evictTables();
    const count = states.length;
    const runStart = first * gb;
    const stored = Math.min(buf.length, runStart + count * gb - offset);
    const sector = this.nextSector;
    if (sector + count * gs > L.MAX_EXTENT_FILE_SECTORS) {
      throw new BlockError('Unsupported', 'the sparse extent file would grow past 2 TiB, which grain tables cannot address');
    }
    this.nextSector += count * gs;
    let data = buf.subarray(0, stored);
    const head = offset - runStart;
    const tail = count * gb - head - stored;
    if (head || tail) {
      data = new Uint8Array(count * gb);
      // Only the first and last grain can be partly written; zeroed grains do not show the parent.
      if (head) await this.fillAround(data.subarray(0, gb), runStart, states[0]);
      if (tail) await this.fillAround(data.subarray((count - 1) * gb), runStart + (count - 1) * gb, states[count - 1]);
      data.set(buf.subarray(0, stored), head);
    }
    await this.file.write(data, sector * L.SECTOR);
    this.fileSize = Math.max(this.fileSize, (sector + count * gs) * L.SECTOR);
    const entries: number[] = [];
    for (let i = 0; i < count; i++) entries.push(sector + i * gs);
    await this.setEntries(first, entries);
    return stored;
  }

  private async fillAround(grain: Uint8Array, offset: number, st: GrainState): Promise<void> {
    if (st.state === 'zero' || !this.below.present) grain.fill(0);
    else await this.below.read(grain, offset);
  }

  /**
   * Points grains `first`... at `entries` (sector numbers, or GTE_ZEROED):
   * grain tables first (both copies), then directory entries of any table
   * made for them. Runs under the lock.
   */
  private async setEntries(first: number, entries: number[]): Promise<void> {
    const gtes = this.header.gtesPerGt;
    for (let i = 0; i < entries.length; ) {
      const g = first + i;
      const t = Math.floor(g / gtes);
      const n = Math.min(entries.length - i, gtes - (g % gtes));
      const fresh = this.table(t) === undefined;
      if (fresh) this.newTable(t);
      const gt = await this.table(t)!;
      gt.set(entries.slice(i, i + n), g % gtes);
      if (this.tablesAtEnd) {
        this.tailDirty = true;
      } else {
        const bytes = leBytes(gt.subarray(g % gtes, (g % gtes) + n));
        const at = (g % gtes) * 4;
        if (fresh) {
          await this.writeNewTable(t, gt);
        } else {
          await this.file.write(bytes, this.gd[t] * L.SECTOR + at);
          if (this.rgd) await this.file.write(bytes, this.rgd[t] * L.SECTOR + at);
        }
      }
      i += n;
    }
  }

  /** A new, empty grain table for directory entry `t`, in memory. */
  private newTable(t: number): void {
    this.gts.set(t, Promise.resolve(new Uint32Array(this.header.gtesPerGt)));
  }

  /** Stores a new table (and its redundant copy) at the end of the file, then the directory entries naming it. */
  private async writeNewTable(t: number, gt: Uint32Array): Promise<void> {
    const sectors = Math.ceil(this.gtBytes / L.SECTOR);
    const copies = this.rgd ? 2 : 1;
    const at = this.nextSector;
    this.nextSector += sectors * copies;
    const bytes = new Uint8Array(sectors * L.SECTOR);
    bytes.set(leBytes(gt));
    await this.file.write(bytes, at * L.SECTOR);
    if (this.rgd) await this.file.write(bytes, (at + sectors) * L.SECTOR);
    this.fileSize = Math.max(this.fileSize, this.nextSector * L.SECTOR);
    this.gd[t] = at;
    await this.file.write(leBytes(this.gd.subarray(t, t + 1)), this.header.gdOffset! * L.SECTOR + t * 4);
    if (this.rgd) {
      this.rgd[t] = at + sectors;
      await this.file.write(leBytes(this.rgd.subarray(t, t + 1)), this.header.rgdOffset * L.SECTOR + t * 4);
    }
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.checkWritable();
    const gb = this.grainBytes;
    for (let at = offset; at < offset + length; ) {
      const g = Math.floor(at / gb);
      const end = Math.min((g + 1) * gb, offset + length);
      const whole = at === g * gb && end - at === gb;
      const st = await this.grain(g);
      if (st.state === 'zero' || (st.state === 'unallocated' && !this.below.present && !this.pending.has(g))) {
        // Already reads as zeros.
      } else if (whole && this.zeroGrain && !this.compressed && (mayUnmap || st.state !== 'data')) {
        await this.lock.run(() => this.setEntries(g, [L.GTE_ZEROED]));
      } else {
        await this.write(new Uint8Array(end - at), at);
      }
      at = end;
    }
  }

  /** Sparse extents cannot give grains back (neither can QEMU); a discard changes nothing. */
  async discard(): Promise<void> {
    this.checkWritable();
  }

  async flush(): Promise<void> {
    await this.file.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const g of [...this.pending.keys()]) await this.emitPending(g);
    if (this.tailDirty) {
      const gd = this.gd;
      const tables = new Map<number, Uint32Array>();
      for (const [t, gt] of this.gts) tables.set(t, await gt);
      await this.lock.run(() => writeStreamTail(this.file, this.header, this.nextSector, gd, tables));
      await this.file.flush();
    }
  }

  /**
   * Finds the first grain table or grain that points past the end of the
   * file (what QEMU's check looks for, stopping there as it does) and logs
   * it; `base` is the extent's guest offset. Returns the problems found (0 or 1).
   */
  async check(log: (line: string) => void, base: number): Promise<number> {
    const gtes = this.header.gtesPerGt;
    for (let t = 0; t < this.gd.length; t++) {
      let gt: Uint32Array | undefined;
      try {
        gt = await this.table(t);
      } catch (err) {
        log(`ERROR: ${(err as Error).message}`);
        return 1;
      }
      for (let i = 0; gt && i < gtes; i++) {
        const e = gt[i];
        if (e === 0 || (e === L.GTE_ZEROED && this.zeroGrain) || e * L.SECTOR < this.fileSize) continue;
        log(`ERROR: cluster offset for sector ${(base + (t * gtes + i) * this.grainBytes) / L.SECTOR} points after EOF`);
        return 1;
      }
    }
    return 0;
  }

  // ---------------------------------------------------------------- streams

  /** Bytes compressClusters works on: whole grains. */
  get compressionCluster(): number {
    return this.grainBytes;
  }

  private async checkUnwritten(g: number): Promise<void> {
    if ((await this.grain(g)).state === 'data') {
      throw new BlockError(
        'Unsupported',
        `streamOptimized images are written once, in order: the grain at offset ${g * this.grainBytes} is already written`,
      );
    }
  }

  /** Compressed writes: whole grains are compressed (in parallel) and appended; parts of grains wait in `pending`. */
  private async writeStream(buf: Uint8Array, offset: number): Promise<void> {
    const gb = this.grainBytes;
    let at = 0;
    const headPart = offset % gb ? Math.min(buf.length, gb - (offset % gb)) : 0;
    if (headPart) {
      await this.addPartial(buf.subarray(0, headPart), offset);
      at = headPart;
    }
    const wholeEnd = at + Math.floor((buf.length - at) / gb) * gb;
    // The last grain of the extent may be cut short by its end.
    const lastWhole = offset + buf.length === this.length && buf.length > wholeEnd ? buf.length : wholeEnd;
    if (lastWhole > at) await (await this.compressGrains(buf.subarray(at, lastWhole), offset + at))();
    if (lastWhole < buf.length) await this.addPartial(buf.subarray(lastWhole), offset + lastWhole);
  }

  private addPartial(piece: Uint8Array, offset: number): Promise<void> {
    const g = Math.floor(offset / this.grainBytes);
    return this.partialLock.run(async () => {
      let p = this.pending.get(g);
      if (!p) {
        await this.checkUnwritten(g);
        p = { data: new Uint8Array(Math.min(this.grainBytes, this.length - g * this.grainBytes)), filled: 0 };
        this.pending.set(g, p);
      }
      p.data.set(piece, offset % this.grainBytes);
      // Writes to a grain do not overlap (each part is written once), so the count says when it is full.
      p.filled += piece.length;
      if (p.filled >= p.data.length) await this.emitPending(g);
    });
  }

  private async emitPending(g: number): Promise<void> {
    const p = this.pending.get(g)!;
    this.pending.delete(g);
    await (await this.compressGrains(p.data, g * this.grainBytes))();
  }

  /**
   * Compresses whole grains at grain-aligned `offset` (the last may be cut by
   * the end of the extent), in parallel; the returned function appends them,
   * each after its marker, then points the grain tables at them.
   */
  async compressGrains(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    this.checkWritable();
    if (!this.compressed) throw new BlockError('Unsupported', 'this extent does not store compressed grains');
    const gb = this.grainBytes;
    const first = offset / gb;
    const count = Math.ceil(buf.length / gb);
    for (let i = 0; i < count; i++) {
      await this.checkUnwritten(first + i);
      this.pending.delete(first + i); // a whole grain replaces what part of it was waiting
    }
    const lba = (g: number) => (g * gb) / L.SECTOR;
    const grains = await Promise.all(
      Array.from({ length: count }, (_, i) => compressGrain(buf.subarray(i * gb, (i + 1) * gb), lba(first + i))),
    );
    return () =>
      this.lock.run(async () => {
        for (let i = 0; i < count; i++) await this.checkUnwritten(first + i);
        await this.cutTail();
        const total = grains.reduce((n, b) => n + b.length, 0);
        const out = new Uint8Array(total);
        const entries: number[] = [];
        let pos = 0;
        for (const b of grains) {
          entries.push(this.nextSector + pos / L.SECTOR);
          out.set(b, pos);
          pos += b.length;
        }
        await this.file.write(out, this.nextSector * L.SECTOR);
        this.nextSector += total / L.SECTOR;
        this.fileSize = Math.max(this.fileSize, this.nextSector * L.SECTOR);
        await this.setEntries(first, entries);
      });
  }

  /** Before the first grain is appended to a stream, its old tables and footer are cut off (close() writes new ones). */
  private async cutTail(): Promise<void> {
    if (this.tailSector === undefined) return;
    // Every table is read before the old ones go.
    for (let t = 0; t < this.gd.length; t++) await this.table(t);
    await this.file.truncate(this.tailSector * L.SECTOR);
    this.fileSize = this.tailSector * L.SECTOR;
    this.gd.fill(0);
    this.tailSector = undefined;
    this.tailDirty = true;
  }
}

async function readDirectory(file: Protocol, sector: number, entries: number, fileSize: number): Promise<Uint32Array> {
  if (sector * L.SECTOR + entries * 4 > fileSize) {
    throw new BlockError('Corrupt', 'the grain directory lies past the end of the file (truncated?)');
  }
  const bytes = new Uint8Array(entries * 4);
  await file.read(bytes, sector * L.SECTOR);
  return leU32s(bytes);
}
