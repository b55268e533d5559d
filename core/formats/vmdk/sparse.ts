/**
 * The hosted sparse extent ("KDMV"): a grain directory of grain tables of
 * 32-bit grain sector numbers (monolithicSparse, twoGbMaxExtentSparse):
 * reading (compressed grains too), allocating and writing grains, zeroed
 * grains. Tables are after the header (as QEMU lays them out) or, in a
 * VMware stream, at the end of the file, named by a footer (stream.ts);
 * writing compressed grains is stream-extent.ts's.
 */
import type { LayerExtent } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { Mutex } from '../../image/locks.js';
import type { Protocol } from '../../io/protocol.js';
import type { WritableExtent } from './extent.js';
import * as L from './limits.js';
import { gdEntriesFor, parseSparseHeader, validateSparseHeader, type SparseHeader } from './sparse-header.js';
import { leBytes, leU32s } from './entries.js';
import { inflateGrain, readFooter } from './stream.js';

/** What lies under an extent: the parent image's bytes at the extent's guest range. */
export interface Below {
  /** Fills `buf` with the parent's bytes at extent offset `offset` (zeros where there is no parent). */
  read(buf: Uint8Array, offset: number): Promise<void>;
  /** True when there is a parent to show through unallocated grains. */
  readonly present: boolean;
}

export const NOTHING_BELOW: Below = { present: false, read: async (buf) => void buf.fill(0) };

/** A hosted sparse extent's header and directories, read and checked. */
export interface SparseParts {
  file: Protocol;
  header: SparseHeader;
  gd: Uint32Array;
  /** The redundant directory, kept in step with `gd` (absent when tables are at the end). */
  rgd: Uint32Array | undefined;
  fileSize: number;
  writable: boolean;
  below: Below;
  /** The footer named the directory: the tables follow the last grain (a VMware stream). */
  tablesAtEnd: boolean;
}

/** Reads a hosted sparse extent's header (or footer) and directories; every field is checked before it is used. */
export async function readSparseParts(file: Protocol, writable: boolean, below: Below = NOTHING_BELOW): Promise<SparseParts> {
  const fileSize = await file.size();
  const first = new Uint8Array(L.SECTOR);
  await file.read(first, 0);
  let header = parseSparseHeader(first);
  const tablesAtEnd = header.gdOffset === undefined;
  if (tablesAtEnd) header = await readFooter(file, fileSize);
  validateSparseHeader(header, fileSize, writable);
  const entries = gdEntriesFor(header.capacity, header.grainSectors, header.gtesPerGt);
  const gd = await readDirectory(file, header.gdOffset!, entries, fileSize);
  const hasRgd = header.flags & L.FLAG_RGD && !tablesAtEnd;
  const rgd = hasRgd ? await readDirectory(file, header.rgdOffset, entries, fileSize) : undefined;
  return { file, header, gd, rgd, fileSize, writable, below, tablesAtEnd };
}

type GrainState = { state: 'unallocated' | 'zero' } | { state: 'data'; sector: number };

export class SparseExtent implements WritableExtent {
  readonly length: number;
  readonly grainBytes: number;
  readonly compressed: boolean;
  protected readonly zeroGrain: boolean;
  protected readonly gtBytes: number;
  protected readonly gts = new Map<number, Promise<Uint32Array>>();
  protected readonly lock = new Mutex();
  /** Sector where the next grain (or table) goes. */
  protected nextSector: number;
  readonly file: Protocol;
  readonly header: SparseHeader;
  protected readonly gd: Uint32Array;
  protected readonly rgd: Uint32Array | undefined;
  protected fileSize: number;
  protected readonly writable: boolean;
  protected readonly below: Below;
  /** The last grain decompressed, for reads smaller than a grain. */
  private inflated: { sector: number; data: Uint8Array } | undefined;

  constructor(p: SparseParts) {
    ({ file: this.file, header: this.header, gd: this.gd, rgd: this.rgd, fileSize: this.fileSize } = p);
    ({ writable: this.writable, below: this.below } = p);
    const header = p.header;
    this.length = header.capacity * L.SECTOR;
    this.grainBytes = header.grainSectors * L.SECTOR;
    this.compressed = header.compressAlgorithm === L.COMPRESSION_DEFLATE;
    this.zeroGrain = (header.flags & L.FLAG_ZERO_GRAIN) !== 0;
    this.gtBytes = header.gtesPerGt * 4;
    const fileSectors = Math.ceil(p.fileSize / L.SECTOR);
    // Same as QEMU: grains are appended from the first grain boundary at or after the end (compressed: the end).
    this.nextSector = this.compressed ? fileSectors : Math.ceil(fileSectors / header.grainSectors) * header.grainSectors;
  }

  /** The grain table of directory entry `i` (undefined when it has none). */
  protected table(i: number): Promise<Uint32Array> | undefined {
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
   * Keeps the table cache bounded. Tables are on disk (unless keepsTables),
   * and a writable extent drops them only under the lock, when no change to
   * one is under way.
   */
  /** True while the cached tables are the only copy (a stream being written). */
  protected keepsTables(): boolean {
    return false;
  }

  protected evictTables(): void {
    if (this.keepsTables() || this.gts.size < L.MAX_CACHED_TABLES) return;
    for (const t of this.gts.keys()) {
      if (this.gts.size < L.MAX_CACHED_TABLES / 2) break;
      this.gts.delete(t);
    }
  }

  protected async grain(g: number): Promise<GrainState> {
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

  protected checkWritable(): void {
    if (!this.writable) throw new BlockError('InvalidArgument', 'this extent is read-only');
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable();
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
  protected async setEntries(first: number, entries: number[]): Promise<void> {
    const gtes = this.header.gtesPerGt;
    for (let i = 0; i < entries.length; ) {
      const g = first + i;
      const t = Math.floor(g / gtes);
      const n = Math.min(entries.length - i, gtes - (g % gtes));
      const fresh = this.table(t) === undefined;
      if (fresh) this.newTable(t);
      const gt = await this.table(t)!;
      gt.set(entries.slice(i, i + n), g % gtes);
      await this.storeEntries(t, gt, g % gtes, n, fresh);
      i += n;
    }
  }

  /** Writes entries `from`... (`n` of them) of table `t` to the file, or the whole table if it is new. */
  protected async storeEntries(t: number, gt: Uint32Array, from: number, n: number, fresh: boolean): Promise<void> {
    if (fresh) return this.writeNewTable(t, gt);
    const bytes = leBytes(gt.subarray(from, from + n));
    await this.file.write(bytes, this.gd[t] * L.SECTOR + from * 4);
    if (this.rgd) await this.file.write(bytes, this.rgd[t] * L.SECTOR + from * 4);
  }

  /** A new, empty grain table for directory entry `t`, in memory. */
  protected newTable(t: number): void {
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

  /** True when part of grain `g` waits in memory to be written (streams). */
  protected holdsPart(_g: number): boolean {
    return false;
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.checkWritable();
    const gb = this.grainBytes;
    for (let at = offset; at < offset + length; ) {
      const g = Math.floor(at / gb);
      const end = Math.min((g + 1) * gb, offset + length);
      const whole = at === g * gb && end - at === gb;
      const st = await this.grain(g);
      if (st.state === 'zero' || (st.state === 'unallocated' && !this.below.present && !this.holdsPart(g))) {
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

  async close(): Promise<void> {}

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
}

async function readDirectory(file: Protocol, sector: number, entries: number, fileSize: number): Promise<Uint32Array> {
  if (sector * L.SECTOR + entries * 4 > fileSize) {
    throw new BlockError('Corrupt', 'the grain directory lies past the end of the file (truncated?)');
  }
  const bytes = new Uint8Array(entries * 4);
  await file.read(bytes, sector * L.SECTOR);
  return leU32s(bytes);
}
