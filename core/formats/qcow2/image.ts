/**
 * An open qcow2 image: guest reads and writes through the L1/L2 tables,
 * copy-on-write for partial and shared clusters, zero clusters, compressed
 * clusters, and reference counting for every host cluster used.
 *
 * Write order keeps a crash harmless: a cluster is counted before data is
 * written to it, data is written before a table points at it, and a cluster
 * is released only after nothing points at it. A crash can leak clusters
 * (`check -r leaks` reclaims them), never corrupt.
 */
import type {
  Amendable,
  AmendProgress,
  BackingRef,
  ChangesBacking,
  Checkable,
  CheckReport,
  ClusterPlacement,
  CompressedWrites,
  Emptiable,
  FormatImage,
  FormatInfo,
  HasBacking,
  LayerExtent,
  LayerState,
  PlacesClusters,
  RepairMode,
  Resizable,
  ResizePreallocation,
  SnapshotInfo,
  Snapshots,
} from '../../image/driver.js';
import type { Qcow2Bitmaps } from './bitmaps.js';
import { applySnapshot, createSnapshot, deleteSnapshot, describeSnapshots } from './snapshots.js';
import { amendQcow2 } from './amend.js';
import { checkQcow2 } from './check.js';
import { codecFor, COMPRESSION_TYPES, type Codec } from './compression.js';
import { BlockError } from '../../image/errors.js';
import { Mutex, RangeLock } from '../../image/locks.js';
import { COMPRESS_CONCURRENCY, mapLimited } from '../../image/parallel.js';
import type { Protocol } from '../../io/protocol.js';
import type { OptionValues } from '../../options/schema.js';
import { serializeHeader, type Qcow2Header } from './header.js';
import {
  ALL_SUBCLUSTERS,
  decodeL1,
  decodeL2,
  decodePlainL2,
  encodeBitmap,
  encodeL2,
  fromSubclusters,
  hostOf,
  plainL1Offset,
  setPlainL2,
  UNALLOCATED,
  type Mapping,
} from './l2.js';
import * as L from './limits.js';
import { Refcounts } from './refcounts.js';
import { encodeTable, halvesOf, HI, LO, readTable } from './tables.js';
import { FreedClusters, MAX_FREED_RUNS } from './freed-clusters.js';
import type { SnapshotEntry } from './snapshot-table.js';

/** L2 tables kept in memory. */
const L2_CACHE_BYTES = 32 << 20;
/**
 * L2 tables changed in memory and not yet written, at most: a sequential
 * copy fills one table at a time, so a few make its L2 writes one per table
 * instead of one per request. Bounded so they always fit the cache twice over.
 */
const MAX_DIRTY_L2 = 8;
/** Refcount blocks with counts not yet written, at most (the same reasoning). */
const MAX_DIRTY_REFCOUNT_BLOCKS = 8;

interface Backing {
  read(buf: Uint8Array, offset: number): Promise<void>;
  size: number;
}

/** Zeroes what the file stores in a range, leaving its holes alone (they read as zeros already). */
async function zeroStoredData(file: Protocol, offset: number, length: number): Promise<void> {
  for (let at = offset; at < offset + length; ) {
    const ext = await file.blockStatus(at, offset + length - at);
    if (ext.data) await file.writeZeroes(at, ext.length, false);
    at += ext.length;
  }
}

/** The next piece of a write, as planned under the metadata lock. */
type WriteStep =
  | { kind: 'in-place'; host: number; length: number }
  | { kind: 'subclusters'; mapping: Mapping & { host: number } }
  | {
      kind: 'allocate';
      olds: Mapping[];
      /** Subcluster masks of each new cluster. */
      news: { alloc: number; zero: number }[];
      host: number;
      /** Guest bytes [start, end) of the clusters; host bytes [host + lo, host + hi) are written. */
      start: number;
      end: number;
      lo: number;
      hi: number;
      part: (k: number) => [number, number];
    };

export class Qcow2Image
  implements
    FormatImage,
    Resizable,
    HasBacking,
    ChangesBacking,
    Emptiable,
    CompressedWrites,
    PlacesClusters,
    Checkable,
    Snapshots,
    Amendable
{
  readonly clusterSize: number;
  readonly clusterBits: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  /** Extended L2 entries: 128 bits each, clusters split into 32 subclusters. */
  readonly extended: boolean;
  /** u64 words per L2 entry: 1, or 2 with extended L2 entries (entry, then subcluster bitmap). */
  readonly l2Stride: 1 | 2;
  /** The unit of allocation within a cluster: a subcluster, or the whole cluster without extended L2. */
  readonly subclusterSize: number;
  /** The mask of every subcluster of a cluster (a single bit without extended L2). */
  private readonly allSubclusters: number;
  private l1: BigUint64Array;
  private readonly l2Cache = new Map<number, BigUint64Array>();
  /** The offset of the table last used, already last in l2Cache's order (the common case needs no reordering). */
  private recentL2 = -1;
  /**
   * Cached L2 tables whose entries [from, to) (in u64 words) changed since
   * they were last written. With the counts of new data clusters (deferred
   * in Refcounts) they are written back (writeBack: counts first, then
   * tables) on flush, on close, before any refcount drops (a cluster must be
   * unmapped in the file before it is freed there) and before exclusive
   * work. So a crash loses at most the newest mappings, and their clusters
   * become leaks, never corruption.
   */
  private readonly dirtyL2 = new Map<number, { from: number; to: number }>();
  private backing?: Backing;
  /** Metadata changes happen one at a time... */
  private readonly lock = new Mutex();
  /** ...while requests on different clusters move data at the same time. */
  private readonly ranges = new RangeLock();
  private lastCompressed?: { host: number; data: Uint8Array };
  /** Host clusters freed since the last flush, punched once nothing in the file maps them. */
  private readonly freed = new FreedClusters();
  /** Where the next compressed cluster may be packed (0: start a new host cluster). */
  private compressedTail = 0;

  constructor(
    readonly proto: Protocol,
    readonly header: Qcow2Header,
    l1: BigUint64Array,
    /** Replaced when the refcount width changes (amend refcount_bits). */
    public refcounts: Refcounts,
    readonly readOnly: boolean,
    /** Internal snapshots, as the snapshot table lists them. */
    public snapshots: SnapshotEntry[] = [],
    /** The external data file, when the header names one (guest data lives there). */
    dataFile?: Protocol,
  ) {
    this.data = dataFile ?? proto;
    this.clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.extended = (header.incompatible & L.INCOMPAT_EXTL2) !== 0n;
    this.l2Stride = this.extended ? 2 : 1;
    this.l2Entries = this.clusterSize / (8 * this.l2Stride);
    this.subclusterSize = this.extended ? this.clusterSize / L.SUBCLUSTERS : this.clusterSize;
    this.allSubclusters = this.extended ? ALL_SUBCLUSTERS : 1;
    this.l1 = l1;
    this.codec = codecFor(COMPRESSION_TYPES[header.compressionType]);
    this.watchFrees(refcounts);
  }

  /** Switches to new refcount structures (amend's change of refcount width). */
  replaceRefcounts(refcounts: Refcounts): void {
    this.refcounts = refcounts;
    this.watchFrees(refcounts);
  }

  private watchFrees(refcounts: Refcounts): void {
    // Read-only views (a snapshot's) share the refcounts but never free anything.
    if (this.readOnly) return;
    refcounts.onFreed = (c) => {
      this.forgetCluster(c);
      this.freed.add(c);
    };
    refcounts.beforeDecrement = () => this.writeBack();
    refcounts.tableAt = (c) => this.tableAt(c, true);
  }

  /**
   * Host cluster `c` is free and may be handed out again as anything: a
   * table cached at it would be stale (and would make data written there
   * look like it overwrites an L2 table), and compressed data must no longer
   * be packed into it or read back from memory.
   */
  private forgetCluster(c: number): void {
    const cs = this.clusterSize;
    this.l2Cache.delete(c * cs);
    this.dirtyL2.delete(c * cs);
    if (this.compressedTail && Math.floor(this.compressedTail / cs) === c) this.compressedTail = 0;
    if (this.lastCompressed && Math.floor(this.lastCompressed.host / cs) === c) this.lastCompressed = undefined;
  }

  private readonly codec: Codec;

  /**
   * Where guest data clusters are: the image file itself, or an external
   * data file. There, a guest cluster always sits at its own guest offset
   * and no refcount counts it (QEMU's layout).
   */
  readonly data: Protocol;

  get externalData(): boolean {
    return this.data !== this.proto;
  }

  /** The data file is kept a valid raw image of the guest (data_file_raw). */
  get rawData(): boolean {
    return this.externalData && (this.header.autoclear & L.AUTOCLEAR_DATA_FILE_RAW) !== 0n;
  }

  /** The guest size in whole sectors, as QEMU reads it: a size field that is not (a damaged one) is cut down. */
  get size(): number {
    return this.header.size - (this.header.size % 512);
  }

  /** The active L1 table's raw entries. */
  get l1Table(): BigUint64Array {
    return this.l1;
  }

  /** Runs `fn` with no write in progress (check and snapshots need a still image). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    // What it reads from the file must be what the image holds.
    return this.readOnly ? this.lock.run(fn) : this.modify(() => this.writeBack().then(fn));
  }

  /** Opened to be repaired: a corrupt image may then be written by check. */
  repairing = false;

  /** Persistent dirty bitmaps: told of every guest write (bitmaps.ts). */
  bitmaps?: Qcow2Bitmaps;

  /** Set once this session has marked the image dirty (lazy refcounts). */
  private markedDirty = false;

  /** Runs a change with the whole image to itself (no request in flight). */
  private modify<T>(fn: () => Promise<T>): Promise<T> {
    return this.ranges.all(() => this.metadata(fn));
  }

  /** Runs a change to guest clusters [first, last] only; requests elsewhere go on. */
  private modifyClusters<T>(first: number, last: number, fn: () => Promise<T>): Promise<T> {
    return this.ranges.hold(first, last, () => this.metadata(fn));
  }

  /**
   * Runs a metadata change under the lock. With lazy refcounts the image is
   * marked dirty first (QEMU's contract: refcounts may lag until a clean
   * close, and a dirty image has them rebuilt on its next read-write open).
   * Platter's own refcount updates are never lazy, so the mark only tells others.
   */
  private metadata<T>(fn: () => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      if (!this.markedDirty && this.header.compatible & L.COMPAT_LAZY_REFCOUNTS) {
        this.header.incompatible |= L.INCOMPAT_DIRTY;
        await this.writeHeader();
        await this.proto.flush();
        this.markedDirty = true;
      }
      return fn();
    });
  }

  /**
   * Punches the clusters freed so far, after making the metadata that no
   * longer maps them durable (see freed-clusters.ts). Under the lock.
   */
  private async giveBackFreed(): Promise<void> {
    if (!this.freed.size) return;
    await this.writeBackDurably();
    await this.freed.punch(this.proto, this.refcounts);
  }

  /** Puts every metadata change on disk (under the lock): what no table maps any more may then be punched. */
  private async writeBackDurably(): Promise<void> {
    await this.writeBack();
    await this.proto.flush();
  }

  /** Clears the dirty mark once everything is on disk (a clean close, or after a repair). */
  async markClean(): Promise<void> {
    if (!(this.header.incompatible & L.INCOMPAT_DIRTY)) return;
    await this.proto.flush();
    this.header.incompatible &= ~L.INCOMPAT_DIRTY;
    await this.writeHeader();
    await this.proto.flush();
    this.markedDirty = false;
  }

  /** Forgets cached L2 tables (after tables were rewritten behind the cache, inside exclusive()). */
  dropL2Cache(): void {
    // exclusive() wrote every change first; dropping one would lose it.
    if (this.dirtyL2.size) throw new BlockError('Io', 'internal error: L2 changes not yet written would be dropped');
    this.l2Cache.clear();
  }

  /** Reads an L2 table (validated against metadata overlaps), through the cache. */
  readL2(offset: number): Promise<BigUint64Array> {
    return this.l2Table(offset);
  }

  get backingRef(): BackingRef | undefined {
    return this.header.backingFile === undefined
      ? undefined
      : { filename: this.header.backingFile, format: this.header.backingFormat };
  }

  setBacking(backing: Backing | undefined): void {
    this.backing = backing;
  }

  /**
   * Names another backing file (and format) in the header, keeping every other
   * extension. Reads keep going to the backing image given by
   * setBacking until the image is reopened.
   */
  async changeBackingFile(filename?: string, format?: string): Promise<void> {
    this.checkWritable();
    await this.modify(async () => {
      const next: Qcow2Header = { ...this.header, backingFile: filename, backingFormat: filename === undefined ? undefined : format };
      // Throws, before anything is written, when the name does not fit.
      const raw = serializeHeader(next);
      await this.proto.write(raw, 0);
      this.header.backingFile = next.backingFile;
      this.header.backingFormat = next.backingFormat;
    });
  }

  // ---- mapping --------------------------------------------------------

  /** The cached L2 table at `offset`, made the most recently used. */
  private cachedL2(offset: number): BigUint64Array | undefined {
    const t = this.l2Cache.get(offset);
    if (t && offset !== this.recentL2) this.rememberL2(offset, t);
    return t;
  }

  /** Caches the L2 table at `offset` as the most recently used. */
  private rememberL2(offset: number, t: BigUint64Array): void {
    this.l2Cache.delete(offset);
    this.l2Cache.set(offset, t);
    this.recentL2 = offset;
  }

  private async l2Table(offset: number): Promise<BigUint64Array> {
    let t = this.cachedL2(offset);
    if (t) return t;
    const overlap = this.metadataOverlap(offset, this.clusterSize, false);
    if (overlap) throw new BlockError('Corrupt', `an L2 table at offset ${offset} overlaps the ${overlap}`);
    t = await readTable(this.proto, offset, this.clusterSize / 8);
    this.rememberL2(offset, t);
    // Least recently used first; changed tables stay until written (there are few).
    for (const old of this.l2Cache.keys()) {
      if (this.l2Cache.size * this.clusterSize <= L2_CACHE_BYTES) break;
      if (!this.dirtyL2.has(old)) this.l2Cache.delete(old);
    }
    return t;
  }

  /** The offset of the L2 table entry `l1i` names (0: none), checked as decodeL1 checks it. */
  private l2Offset(l1i: number): number {
    const w = halvesOf(this.l1);
    return plainL1Offset(w[2 * l1i + HI], w[2 * l1i + LO], this.clusterSize) ?? decodeL1(this.l1[l1i], this.clusterSize, l1i).offset;
  }

  /**
   * What guest cluster `index` is, answered without I/O or BigInt arithmetic
   * in the common cases: no L2 table, or a cached one and a plain entry.
   * Undefined otherwise: then lookup() reads, decodes or refuses. A read and
   * its block status look up every cluster; on the 2 GiB bench image, as an
   * awaited lookup() that cost each copy thread about 40 ms of decoding and
   * garbage collection.
   */
  private quickLookup(index: number): Mapping | undefined {
    if (this.extended) return undefined;
    const l1i = Math.floor(index / this.l2Entries);
    if (l1i >= this.l1.length) return UNALLOCATED;
    const offset = this.l2Offset(l1i);
    if (!offset) return UNALLOCATED;
    const table = this.cachedL2(offset);
    if (!table) return undefined;
    const j = index % this.l2Entries;
    const w = halvesOf(table);
    return decodePlainL2(w[2 * j + HI], w[2 * j + LO], this.clusterSize);
  }

  /** What guest cluster `index` is. */
  async lookup(index: number): Promise<Mapping> {
    const quick = this.quickLookup(index);
    if (quick) return quick;
    const l1i = Math.floor(index / this.l2Entries);
    if (l1i >= this.l1.length) return UNALLOCATED;
    const offset = this.l2Offset(l1i);
    if (!offset) return UNALLOCATED;
    const t = await this.l2Table(offset);
    const m = this.entryAt(t, index % this.l2Entries, () => `L2 entry for guest cluster ${index}`);
    if (m.kind === 'compressed' && this.externalData) {
      throw new BlockError('Corrupt', `guest cluster ${index} is compressed in an image with an external data file`);
    }
    return m;
  }

  /** Decodes entry `j` of an L2 table as readL2 returns it. */
  entryAt(table: BigUint64Array, j: number, where: () => string): Mapping {
    const w = this.l2Stride;
    return decodeL2(table[j * w], this.clusterBits, this.header.version, where, w === 2 ? table[j * w + 1] : undefined, this.externalData);
  }

  // ---- subclusters ------------------------------------------------------

  /** Subclusters [first, end) of a cluster as a mask. */
  private static mask(first: number, end: number): number {
    return end - first >= 32 ? ALL_SUBCLUSTERS : ((2 ** (end - first) - 1) * 2 ** first) >>> 0;
  }

  /** The subclusters bytes [from, to) of a cluster touch. */
  private touched(from: number, to: number): number {
    const sc = this.subclusterSize;
    return Qcow2Image.mask(Math.floor(from / sc), Math.ceil(to / sc));
  }

  /** The subclusters bytes [from, to) of a cluster cover wholly. */
  private covered(from: number, to: number): number {
    const sc = this.subclusterSize;
    const first = Math.ceil(from / sc);
    const end = Math.floor(to / sc);
    return end > first ? Qcow2Image.mask(first, end) : 0;
  }

  /** Which subclusters of `m` hold data and which read as zeros. */
  private masks(m: Mapping): { alloc: number; zero: number } {
    if (m.kind === 'subclusters') return m;
    if (m.kind === 'data' || m.kind === 'compressed') return { alloc: this.allSubclusters, zero: 0 };
    return { alloc: 0, zero: m.kind === 'zero' ? this.allSubclusters : 0 };
  }

  /**
   * Splits bytes [from, to) of a cluster mapped by `m` into runs that each
   * read one way, as plain mappings (data, zero or unallocated).
   */
  private spans(m: Mapping, from: number, to: number): { from: number; to: number; m: Mapping }[] {
    if (m.kind !== 'subclusters') return [{ from, to, m }];
    const sc = this.subclusterSize;
    const out: { from: number; to: number; m: Mapping }[] = [];
    const data: Mapping = { kind: 'data', host: m.host, copied: m.copied };
    const zero: Mapping = { kind: 'zero', host: 0, copied: false };
    const at = (i: number) => ((m.alloc >>> i) & 1 ? data : (m.zero >>> i) & 1 ? zero : UNALLOCATED);
    for (let a = from; a < to; ) {
      const kind = at(Math.floor(a / sc));
      let b = Math.min(to, (Math.floor(a / sc) + 1) * sc);
      while (b < to && at(b / sc) === kind) b = Math.min(to, b + sc);
      out.push({ from: a, to: b, m: kind });
      a = b;
    }
    return out;
  }

  /**
   * Which metadata structure [offset, offset+length) would overlap, if any
   * (QEMU's overlap check): data must never land on tables.
   */
  metadataOverlap(offset: number, length: number, checkL2: boolean): string | undefined {
    // (Callers check data clusters; an external data file holds no metadata.)
    const cs = this.clusterSize;
    // A lookup per cluster, not a scan of the refcount table or of the cached tables.
    for (let c = Math.floor(offset / cs); c * cs < offset + length; c++) {
      const what = this.refcounts.metadataAt(c) ?? this.tableAt(c, checkL2);
      if (what) return what;
    }
    return undefined;
  }

  /**
   * Which table in use host cluster `c` holds, of those the refcount
   * structures do not describe: the L1 table, the snapshot table, the bitmap
   * directory or (with `checkL2`) a cached L2 table. Undefined if none.
   */
  private tableAt(c: number, checkL2: boolean): string | undefined {
    const cs = this.clusterSize;
    const at = c * cs;
    // Asked for every cluster allocated: plain comparisons, no closure.
    const { l1TableOffset: l1, nbSnapshots, snapshotsOffset } = this.header;
    if (this.l1.length && l1 <= at && at < l1 + Math.ceil((this.l1.length * 8) / cs) * cs) return 'L1 table';
    if (nbSnapshots && snapshotsOffset <= at && at < snapshotsOffset + cs) return 'snapshot table';
    if (this.bitmaps?.directoryOverlaps(at, cs)) return 'bitmap directory';
    // L2 tables are single clusters at aligned offsets (decodeL1 checks).
    if (checkL2 && this.l2Cache.has(at)) return 'L2 table';
    return undefined;
  }

  // ---- reading ----------------------------------------------------------

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.clusterSize;
    // Contiguous host data is read with one request.
    let run: { dst: number; host: number; len: number } | undefined;
    const flushRun = async () => {
      if (run) await this.data.read(buf.subarray(run.dst, run.dst + run.len), run.host);
      run = undefined;
    };
    for (let done = 0; done < buf.length; ) {
      const guest = offset + done;
      const index = Math.floor(guest / cs);
      const inCluster = guest % cs;
      const len = Math.min(cs - inCluster, buf.length - done);
      for (const s of this.spans(this.quickLookup(index) ?? (await this.lookup(index)), inCluster, inCluster + len)) {
        const dst = done + s.from - inCluster;
        if (s.m.kind === 'data') {
          const host = s.m.host + s.from;
          if (run && run.host + run.len === host) run.len += s.to - s.from;
          else {
            await flushRun();
            run = { dst, host, len: s.to - s.from };
          }
        } else {
          await flushRun();
          await this.readOther(s.m, buf.subarray(dst, dst + s.to - s.from), guest + s.from - inCluster, s.from);
        }
      }
      done += len;
    }
    await flushRun();
  }

  /** Reads bytes of one guest cluster as `m` maps them, from `inCluster` on (for copy-on-write). */
  private async readMapped(m: Mapping, dst: Uint8Array, guest: number, inCluster: number): Promise<void> {
    for (const s of this.spans(m, inCluster, inCluster + dst.length)) {
      const part = dst.subarray(s.from - inCluster, s.to - inCluster);
      if (s.m.kind === 'data') await this.data.read(part, s.m.host + s.from);
      else await this.readOther(s.m, part, guest + s.from - inCluster, s.from);
    }
  }

  /** Reads a piece of one guest cluster that is not plain data. */
  private async readOther(m: Mapping, dst: Uint8Array, guest: number, inCluster: number): Promise<void> {
    if (m.kind === 'compressed') {
      const data = await this.decompress(m.host, m.length);
      dst.set(data.subarray(inCluster, inCluster + dst.length));
    } else if (m.kind === 'unallocated' && this.backing) {
      await this.readBacking(dst, guest);
    } else {
      dst.fill(0);
    }
  }

  /** Reads from the backing image; past its end the guest sees zeros. */
  private async readBacking(dst: Uint8Array, guest: number): Promise<void> {
    const b = this.backing!;
    const n = Math.max(0, Math.min(dst.length, b.size - guest));
    if (n > 0) await b.read(dst.subarray(0, n), guest);
    dst.fill(0, n);
  }

  private async decompress(host: number, length: number): Promise<Uint8Array> {
    if (this.lastCompressed?.host === host) return this.lastCompressed.data;
    // Compressed data never spans more than a cluster plus a sector.
    if (length > this.clusterSize + 512) throw new BlockError('Corrupt', `compressed cluster at ${host} claims ${length} bytes`);
    const raw = new Uint8Array(length);
    await this.proto.read(raw, host);
    let data: Uint8Array;
    try {
      data = this.codec.decompress(raw, this.clusterSize);
    } catch (err) {
      const why = err instanceof BlockError ? `: ${err.message}` : '';
      throw new BlockError('Corrupt', `compressed cluster at ${host} does not decompress${why}`, {}, err);
    }
    this.lastCompressed = { host, data };
    return data;
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    const cs = this.clusterSize;
    const inCluster = offset % cs;
    const firstIndex = Math.floor(offset / cs);
    const first = this.runIn(this.quickLookup(firstIndex) ?? (await this.lookup(firstIndex)), inCluster, length);
    let len = first.length;
    // Extend over following clusters that start the same way (and contiguous host offsets).
    while (len < length && (offset + len) % cs === 0 && !first.compressed) {
      const index = (offset + len) / cs;
      const l1i = Math.floor(index / this.l2Entries);
      const noTable = l1i >= this.l1.length || !this.l2Offset(l1i);
      if (first.state === 'unallocated' && first.host === undefined && noTable) {
        // No L2 table: its whole range is unallocated, in one step (not one per cluster).
        len += Math.min(((l1i + 1) * this.l2Entries - index) * cs, length - len);
        continue;
      }
      const next = this.runIn(this.quickLookup(index) ?? (await this.lookup(index)), 0, length - len);
      if (next.state !== first.state || next.compressed) break;
      if (first.host === undefined ? next.host !== undefined : next.host !== first.host + len) break;
      len += next.length;
    }
    return {
      offset,
      length: len,
      state: first.state,
      hostOffset: first.host,
      hostFile: first.host !== undefined && this.externalData ? this.data : undefined,
      compressed: first.compressed,
    };
  }

  /**
   * The run of bytes from `from` in a cluster mapped by `m` (at most `max`)
   * that reads one way, and where it is stored. Like QEMU, a host offset is
   * reported for unallocated subclusters of a cluster that has one.
   */
  private runIn(
    m: Mapping,
    from: number,
    max: number,
  ): { state: LayerState; length: number; host?: number; compressed: boolean } {
    const cs = this.clusterSize;
    if (m.kind === 'subclusters') {
      const s = this.spans(m, from, Math.min(cs, from + max))[0];
      const state = s.m.kind === 'data' ? 'data' : s.m.kind === 'zero' ? 'zero' : 'unallocated';
      return { state, length: s.to - from, host: m.host ? m.host + from : undefined, compressed: false };
    }
    const state = m.kind === 'data' || m.kind === 'compressed' ? 'data' : m.kind;
    const host = m.kind === 'data' || (m.kind === 'zero' && m.host) ? m.host + from : undefined;
    return { state, length: Math.min(cs - from, max), host, compressed: m.kind === 'compressed' };
  }

  // ---- writing ----------------------------------------------------------

  private checkWritable(): void {
    if (this.readOnly) throw new BlockError('InvalidArgument', 'image is open read-only');
    if (this.header.incompatible & L.INCOMPAT_CORRUPT && !this.repairing) {
      throw new BlockError('Corrupt', 'the image is marked corrupt; repair it with check -r all before writing');
    }
  }

  /** The first and last guest cluster of a (non-empty) byte range. */
  private clustersOf(offset: number, length: number): [number, number] {
    return [Math.floor(offset / this.clusterSize), Math.floor((offset + length - 1) / this.clusterSize)];
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable();
    if (!buf.length) return;
    await this.ranges.hold(...this.clustersOf(offset, buf.length), async () => {
      // No lock round trip per write for images without bitmaps (most).
      const bitmaps = this.bitmaps;
      if (bitmaps) await this.metadata(() => bitmaps.track(offset, buf.length));
      await this.writeClusters(buf, offset, (fn) => this.metadata(fn));
    });
  }

  /** A write from a caller that already holds the whole image (zero writes, compressed writes). */
  private writeLocked(buf: Uint8Array, offset: number): Promise<void> {
    return this.writeClusters(buf, offset, (fn) => fn());
  }

  /**
   * Writes guest bytes whose clusters the caller holds. Metadata is looked
   * up and changed inside `meta` (the metadata lock, or nothing when the
   * caller holds it already); the data itself moves outside it, so requests
   * on other clusters go on meanwhile. Order for a crash: the new clusters
   * are counted, then the data is written, then the L2 entries point at it,
   * then the old clusters are released.
   */
  private async writeClusters(buf: Uint8Array, offset: number, meta: <T>(fn: () => Promise<T>) => Promise<T>): Promise<void> {
    const cs = this.clusterSize;
    let done = 0;
    while (done < buf.length) {
      const guest = offset + done;
      const index = Math.floor(guest / cs);
      const step = await meta(() => this.planWrite(buf, offset, done));
      if (step.kind === 'in-place') {
        await this.data.write(buf.subarray(done, done + step.length), step.host);
        done += step.length;
        continue;
      }
      if (step.kind === 'subclusters') {
        const len = Math.min(cs - (guest % cs), buf.length - done);
        await this.writeSubclusters(step.mapping, index, buf.subarray(done, done + len), guest % cs, meta);
        done += len;
        continue;
      }
      const { olds, news, host, start, end, lo, hi, part } = step;
      const count = olds.length;
      let data: Uint8Array;
      if (guest === start + lo && end === start + hi) {
        // Whole (sub)clusters: written straight from the caller's buffer.
        data = buf.subarray(done, done + hi - lo);
      } else {
        data = new Uint8Array(hi - lo);
        // Copy-on-write: data subclusters of the first and last cluster this write does not wholly cover.
        const sc = this.subclusterSize;
        for (const k of count > 1 ? [0, count - 1] : [0]) {
          const keep = (news[k].alloc & ~this.covered(...part(k))) >>> 0;
          for (let i = 0; i < 32; i++) {
            if (!((keep >>> i) & 1)) continue;
            let j = i + 1;
            while (j < 32 && (keep >>> j) & 1) j++;
            const at = k * cs + i * sc - lo;
            await this.readMapped(olds[k], data.subarray(at, at + (j - i) * sc), start + k * cs + i * sc, i * sc);
            i = j;
          }
        }
        data.set(buf.subarray(done, done + (end - guest)), guest - start - lo);
      }
      await this.data.write(data, host + lo);
      await meta(async () => {
        await this.setMappings(
          index,
          news.map((n, k) => fromSubclusters(host + k * cs, true, n.alloc, n.zero, this.allSubclusters)),
        );
        for (const old of olds) await this.release(old);
      });
      done += end - guest;
    }
  }

  /**
   * What the next piece of a write (from `buf[done]` on) does: go in place
   * into clusters it owns, into the subclusters of one, or to new clusters,
   * which are allocated (counted) here.
   */
  private async planWrite(buf: Uint8Array, offset: number, done: number): Promise<WriteStep> {
    const cs = this.clusterSize;
    const guest = offset + done;
    const index = Math.floor(guest / cs);
    const m = await this.lookup(index);
    if (m.kind === 'data' && m.copied) {
      // In place: as many following clusters as are in place and contiguous.
      const inCluster = guest % cs;
      let len = Math.min(cs - inCluster, buf.length - done);
      while (done + len < buf.length) {
        const next = await this.lookup(index + (inCluster + len) / cs);
        if (next.kind !== 'data' || !next.copied || next.host !== m.host + inCluster + len) break;
        len += Math.min(cs, buf.length - done - len);
      }
      const host = m.host + inCluster;
      const overlap = this.externalData ? undefined : this.metadataOverlap(host, len, true);
      if (overlap) await this.signalCorruption(`a data cluster at ${m.host} overlaps the ${overlap}`);
      return { kind: 'in-place', host, length: len };
    }
    if (this.writableInPlace(m)) return { kind: 'subclusters', mapping: m };
    // Allocate: every following cluster in this L2 table that also needs it.
    const l2End = (Math.floor(index / this.l2Entries) + 1) * this.l2Entries;
    const lastIndex = Math.min(Math.floor((offset + buf.length - 1) / cs), l2End - 1);
    const olds: Mapping[] = [m];
    for (let i = index + 1; i <= lastIndex; i++) {
      const n = await this.lookup(i);
      if ((n.kind === 'data' && n.copied) || this.writableInPlace(n)) break;
      olds.push(n);
    }
    // Copy-on-write releases the old clusters: they must not be metadata.
    for (const old of olds) await this.refuseMetadataMapping(old);
    const count = olds.length;
    const start = index * cs;
    const end = Math.min(start + count * cs, offset + buf.length);
    /** Bytes [from, to) of cluster k that this write covers. */
    const part = (k: number): [number, number] => {
      const c = start + k * cs;
      return [Math.max(guest, c) - c, Math.min(end, c + cs) - c];
    };
    // The written subclusters become data, and so do the old data ones
    // (copied); zero subclusters stay zeros, unallocated ones unallocated.
    const news = olds.map((old, k) => {
      const o = this.masks(old);
      const alloc = (o.alloc | this.touched(...part(k))) >>> 0;
      return { alloc, zero: (o.zero & ~alloc) >>> 0 };
    });
    // Host bytes written: from the first data subcluster to the end of the last.
    const sc = this.subclusterSize;
    const lo = (31 - Math.clz32(news[0].alloc & -news[0].alloc)) * sc;
    const hi = (count - 1) * cs + (32 - Math.clz32(news[count - 1].alloc)) * sc;
    const host = await this.allocateData(index, count);
    return { kind: 'allocate', olds, news, host, start, end, lo, hi, part };
  }

  /**
   * Host clusters for `count` guest clusters from `index` on: counted clusters
   * of the image file, or the same offsets in an external data file.
   */
  private allocateData(index: number, count: number): Promise<number> {
    // Only L2 entries will point at them, and those are written after the counts.
    return this.externalData ? Promise.resolve(index * this.clusterSize) : this.refcounts.allocate(count, true);
  }

  /**
   * Extended L2: a cluster whose host cluster is this image's alone (refcount
   * one) but not all data can take writes in place, subcluster by subcluster.
   */
  private writableInPlace(m: Mapping): m is Mapping & { host: number } {
    return this.extended && (m.kind === 'zero' || m.kind === 'subclusters') && m.host !== 0 && m.copied;
  }

  /**
   * Writes `piece` at `from` in one such cluster: the data first, then the
   * bitmap marks the subclusters allocated. A subcluster it covers only in
   * part that held no data keeps the rest of its old content (zeros, or the
   * backing file's).
   */
  private async writeSubclusters(
    m: Mapping & { host: number },
    index: number,
    piece: Uint8Array,
    from: number,
    meta: <T>(fn: () => Promise<T>) => Promise<T>,
  ): Promise<void> {
    const cs = this.clusterSize;
    const sc = this.subclusterSize;
    const { alloc, zero } = this.masks(m);
    const to = from + piece.length;
    const lo = from % sc && !((alloc >>> Math.floor(from / sc)) & 1) ? from - (from % sc) : from;
    const hi = to % sc && !((alloc >>> Math.floor(to / sc)) & 1) ? to - (to % sc) + sc : to;
    let data = piece;
    if (lo < from || hi > to) {
      data = new Uint8Array(hi - lo);
      if (lo < from) await this.readMapped(m, data.subarray(0, from - lo), index * cs + lo, lo);
      if (hi > to) await this.readMapped(m, data.subarray(to - lo), index * cs + to, to);
      data.set(piece, from - lo);
    }
    await meta(async () => {
      const overlap = this.externalData ? undefined : this.metadataOverlap(m.host + lo, hi - lo, true);
      if (overlap) await this.signalCorruption(`a data cluster at ${m.host} overlaps the ${overlap}`);
    });
    await this.data.write(data, m.host + lo);
    const next = (alloc | this.touched(from, to)) >>> 0;
    if (next !== alloc) await meta(() => this.setMappings(index, [fromSubclusters(m.host, true, next, (zero & ~next) >>> 0)]));
  }

  /** Refuses to copy or release a guest cluster whose host cluster holds metadata. */
  private async refuseMetadataMapping(m: Mapping): Promise<void> {
    const host = hostOf(m);
    if (!host || this.externalData) return;
    const overlap = this.metadataOverlap(host, this.clusterSize, false);
    if (overlap) await this.signalCorruption(`a data cluster at ${host} overlaps the ${overlap}`);
  }

  /**
   * Stops a write that would damage metadata and, as QEMU does for version 3
   * images, marks the image corrupt so nothing writes to it before a repair.
   */
  private async signalCorruption(problem: string): Promise<never> {
    let marked = '';
    if (this.header.version >= 3 && !(this.header.incompatible & L.INCOMPAT_CORRUPT)) {
      this.header.incompatible |= L.INCOMPAT_CORRUPT;
      await this.writeHeader();
      await this.proto.flush();
      marked = '; the image is now marked corrupt (repair it with check -r all)';
    }
    throw new BlockError('Corrupt', `${problem}; refusing to write${marked}`);
  }

  /** Clears the corrupt mark (after a repair found the image consistent). */
  async clearCorrupt(): Promise<void> {
    if (!(this.header.incompatible & L.INCOMPAT_CORRUPT)) return;
    this.header.incompatible &= ~L.INCOMPAT_CORRUPT;
    await this.writeHeader();
    await this.proto.flush();
  }

  /** Drops the references an old mapping held. */
  private async release(m: Mapping): Promise<void> {
    const cs = this.clusterSize;
    if (hostOf(m)) {
      // Clusters of an external data file are not counted.
      if (!this.externalData) await this.refcounts.free(hostOf(m), 1);
    } else if (m.kind === 'compressed') {
      const first = Math.floor(m.host / cs);
      const last = Math.floor((m.host + m.length - 1) / cs);
      for (let c = first; c <= last; c++) await this.refcounts.free(c * cs, 1);
    }
    // A discard of a large disk, or a long session with no flush, frees a lot: give it back as it goes.
    if (this.freed.size >= MAX_FREED_RUNS) await this.giveBackFreed();
  }

  /**
   * Points guest clusters [index, index + mappings.length) (all in one L2
   * table) at `mappings`, creating or copying the L2 table as needed.
   */
  private async setMappings(index: number, mappings: Mapping[]): Promise<void> {
    const l1i = Math.floor(index / this.l2Entries);
    if (l1i >= this.l1.length) throw new BlockError('OutOfBounds', `guest cluster ${index} is past the L1 table`);
    const table = await this.writableL2(l1i);
    const w = this.l2Stride;
    const first = (index % this.l2Entries) * w;
    mappings.forEach((m, k) => {
      table.entries[first + k * w] = encodeL2(m, this.clusterBits, this.extended);
      if (this.extended) table.entries[first + k * w + 1] = encodeBitmap(m);
    });
    await this.changedL2(table.offset, first, first + mappings.length * w);
  }

  /** Notes that entries [from, to) of the cached L2 table at `offset` changed; writes back when too much waits. */
  private async changedL2(offset: number, from: number, to: number): Promise<void> {
    const dirty = this.dirtyL2.get(offset);
    this.dirtyL2.set(offset, dirty ? { from: Math.min(dirty.from, from), to: Math.max(dirty.to, to) } : { from, to });
    const tooMany =
      this.dirtyL2.size > Math.min(MAX_DIRTY_L2, L2_CACHE_BYTES / this.clusterSize / 2) ||
      this.refcounts.dirtyBlocks > MAX_DIRTY_REFCOUNT_BLOCKS;
    if (tooMany) await this.writeBack();
  }

  /** Writes the changes held in memory (under the metadata lock): counts before the tables that map them. */
  private async writeBack(): Promise<void> {
    await this.refcounts.writeBack();
    for (const [offset, { from, to }] of this.dirtyL2) {
      const entries = this.l2Cache.get(offset)!;
      const raw = new Uint8Array((to - from) * 8);
      const dv = new DataView(raw.buffer);
      for (let k = from; k < to; k++) dv.setBigUint64((k - from) * 8, entries[k]);
      await this.proto.write(raw, offset + from * 8);
      this.dirtyL2.delete(offset);
    }
  }

  /** The L2 table for L1 index `l1i`, allocated or un-shared so it can be modified. */
  private async writableL2(l1i: number): Promise<{ offset: number; entries: BigUint64Array }> {
    const cur = decodeL1(this.l1[l1i], this.clusterSize, l1i);
    if (cur.offset && cur.copied) return { offset: cur.offset, entries: await this.l2Table(cur.offset) };
    const entries = new BigUint64Array(this.clusterSize / 8);
    if (cur.offset) {
      // Shared with a snapshot: copy it; entries whose clusters are shared lose COPIED.
      entries.set(await this.l2Table(cur.offset));
      for (let i = 0; i < this.l2Entries; i++) {
        const host = hostOf(this.entryAt(entries, i, () => `L2 entry ${i}`));
        const shared = host !== 0 && (await this.refcounts.get(host / this.clusterSize)) !== 1;
        if (shared) entries[i * this.l2Stride] &= ~L.OFLAG_COPIED;
      }
    }
    const offset = await this.refcounts.allocate(1);
    await this.proto.write(encodeTable(entries, this.clusterSize), offset);
    this.rememberL2(offset, entries);
    await this.setL1(l1i, BigInt(offset) | L.OFLAG_COPIED);
    if (cur.offset) await this.refcounts.free(cur.offset, 1);
    return { offset, entries };
  }

  /** Rewrites one L1 entry (check's flag repair). */
  rewriteL1Entry(i: number, e: bigint): Promise<void> {
    return this.setL1(i, e);
  }

  /** Rewrites the first 64 bits of entry `i` of the L2 table at `offset` (check's flag repair). */
  async rewriteL2Entry(offset: number, i: number, e: bigint): Promise<void> {
    const table = await this.l2Table(offset);
    table[i * this.l2Stride] = e;
    const raw = new Uint8Array(8);
    new DataView(raw.buffer).setBigUint64(0, e);
    await this.proto.write(raw, offset + i * this.l2Stride * 8);
  }

  check(repair: RepairMode, log: (line: string) => void): Promise<CheckReport> {
    return checkQcow2(this, repair, log);
  }

  async amend(options: OptionValues, progress?: AmendProgress): Promise<void> {
    this.checkWritable();
    await amendQcow2(this, options, progress);
  }

  listSnapshots(): SnapshotInfo[] {
    return describeSnapshots(this);
  }

  async createSnapshot(name: string): Promise<void> {
    this.checkWritable();
    // Snapshots share clusters through refcounts, which a data file does not have (QEMU refuses too).
    if (this.externalData) throw new BlockError('Unsupported', 'an image with an external data file cannot have internal snapshots');
    await createSnapshot(this, name);
  }

  async applySnapshot(idOrName: string): Promise<void> {
    this.checkWritable();
    // As QEMU: the bitmaps could not say what reverting changed.
    if (this.bitmaps) throw new BlockError('Unsupported', 'a snapshot cannot be applied to an image with persistent dirty bitmaps');
    await applySnapshot(this, idOrName);
  }

  async deleteSnapshot(name: string): Promise<void> {
    this.checkWritable();
    await deleteSnapshot(this, name);
  }

  /**
   * Takes `l1` as the active L1 table once the header names it (snapshot
   * operations): tables cached from before may have been freed by the
   * switch, and so may the cluster compressed data was being packed into.
   */
  adoptL1(l1: BigUint64Array): void {
    this.dropL2Cache();
    this.l1 = l1;
    this.compressedTail = 0;
    this.lastCompressed = undefined;
  }

  private async setL1(i: number, e: bigint): Promise<void> {
    this.l1[i] = e;
    const raw = new Uint8Array(8);
    new DataView(raw.buffer).setBigUint64(0, e);
    await this.proto.write(raw, this.header.l1TableOffset + i * 8);
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.checkWritable();
    if (!length) return;
    await this.modifyClusters(...this.clustersOf(offset, length), async () => {
      await this.bitmaps?.track(offset, length);
      // A raw data file must read as the guest does: the zeros go there, at guest offsets.
      if (this.rawData) return this.data.writeZeroes(offset, length, mayUnmap);
      const canFlag = this.header.version >= 3 || !this.backing;
      if (!canFlag) return this.writeZeroBytes(offset, length);
      // Whole (sub)clusters get the zero flag or bits; the bytes of partial ones are written.
      const sc = this.subclusterSize;
      const first = Math.ceil(offset / sc) * sc;
      const last = Math.floor((offset + length) / sc) * sc;
      if (last <= first) return this.writeZeroBytes(offset, length);
      if (first > offset) await this.writeZeroBytes(offset, first - offset);
      await this.remap(first, last, (old, covered) => {
        // Version 2 without a backing file: unallocated reads as zeros.
        if (this.header.version < 3) return UNALLOCATED;
        if (covered !== this.allSubclusters) {
          // Part of an extended cluster: those subclusters read as zeros, the host cluster stays.
          if (old.kind === 'compressed') return undefined;
          const o = this.masks(old);
          const alloc = (o.alloc & ~covered) >>> 0;
          return fromSubclusters(hostOf(old), 'copied' in old && old.copied, alloc, (o.zero | covered) >>> 0);
        }
        const host = hostOf(old);
        if (!mayUnmap && host && 'copied' in old && old.copied) return { kind: 'zero', host, copied: true };
        return { kind: 'zero', host: 0, copied: false };
      });
      if (offset + length > last) await this.writeZeroBytes(last, offset + length - last);
    });
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    const z = new Uint8Array(Math.min(length, 1 << 20));
    for (let at = offset; at < offset + length; at += z.length) {
      await this.writeLocked(z.subarray(0, Math.min(z.length, offset + length - at)), at);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    const sc = this.subclusterSize;
    const first = Math.ceil(offset / sc) * sc;
    const last = Math.floor((offset + length) / sc) * sc;
    // With a backing file, a discarded (sub)cluster must not show the backing data.
    const toZero = this.backing !== undefined && this.header.version >= 3;
    if (!length) return;
    await this.modifyClusters(...this.clustersOf(offset, length), async () => {
      // Like QEMU, the whole request counts as written, even the parts kept.
      await this.bitmaps?.track(offset, length);
      if (last <= first) return;
      if (this.rawData) return this.data.writeZeroes(first, last - first, true);
      await this.remap(first, last, (old, covered) => {
        if (covered === this.allSubclusters) return toZero ? { kind: 'zero', host: 0, copied: false } : UNALLOCATED;
        if (old.kind === 'compressed') return undefined;
        const o = this.masks(old);
        const zero = toZero ? o.zero | covered : o.zero & ~covered;
        return fromSubclusters(hostOf(old), 'copied' in old && old.copied, (o.alloc & ~covered) >>> 0, zero >>> 0);
      });
      // Nothing maps that part of a data file any more: give the space back.
      if (this.externalData) await this.data.discard(first, Math.min(last, await this.data.size()) - first);
    });
  }

  /**
   * Sets guest bytes [start, end) (whole subclusters) to `next(old, covered)`
   * per cluster, `covered` being the mask of its subclusters in the range,
   * and releases what old mappings no longer hold. Where `next` gives
   * nothing (a compressed cluster only partly covered), zero bytes are
   * written instead.
   */
  private async remap(
    start: number,
    end: number,
    next: (old: Mapping, covered: number) => Mapping | undefined,
  ): Promise<void> {
    const cs = this.clusterSize;
    const byBytes: [number, number][] = [];
    for (let at = start; at < end; ) {
      const index = Math.floor(at / cs);
      const stop = Math.min(end, (Math.floor(index / this.l2Entries) + 1) * this.l2Entries * cs);
      const olds: Mapping[] = [];
      const news: Mapping[] = [];
      for (let c = at; c < stop; ) {
        const i = Math.floor(c / cs);
        const cEnd = Math.min(stop, (i + 1) * cs);
        const old = await this.lookup(i);
        const n = next(old, this.covered(c - i * cs, cEnd - i * cs));
        if (!n) byBytes.push([c, cEnd]);
        olds.push(old);
        news.push(n ?? old);
        c = cEnd;
      }
      for (const old of olds) await this.refuseMetadataMapping(old);
      const same = olds.map((o, i) => this.sameEntry(o, news[i]));
      if (same.includes(false)) {
        await this.setMappings(index, news);
        for (let i = 0; i < olds.length; i++) if (!same[i] && !hostOf(news[i])) await this.release(olds[i]);
      }
      at = stop;
    }
    for (const [a, b] of byBytes) await this.writeZeroBytes(a, b - a);
  }

  /** Whether two mappings encode to the same L2 entry. */
  private sameEntry(a: Mapping, b: Mapping): boolean {
    return (
      encodeL2(a, this.clusterBits, this.extended) === encodeL2(b, this.clusterBits, this.extended) &&
      (!this.extended || encodeBitmap(a) === encodeBitmap(b))
    );
  }

  /**
   * Unmaps every guest cluster, so the whole image reads from its backing
   * file again (what commit leaves behind). L2 tables stay, empty.
   */
  async makeEmpty(): Promise<void> {
    this.checkWritable();
    await this.modify(async () => {
      const cs = this.clusterSize;
      const total = Math.ceil(this.size / cs);
      for (let l1i = 0; l1i < this.l1.length && l1i * this.l2Entries < total; l1i++) {
        // Tables never allocated hold nothing: no lookup per cluster there.
        if (!decodeL1(this.l1[l1i], cs, l1i).offset) continue;
        const first = l1i * this.l2Entries;
        await this.remap(first * cs, (first + Math.min(this.l2Entries, total - first)) * cs, () => UNALLOCATED);
      }
      // An external data file's clusters are not counted: what they held is given back here.
      if (this.externalData) {
        await this.writeBackDurably();
        await this.data.discard(0, Math.min(this.size, await this.data.size()));
      }
    });
  }

  /**
   * Allocates guest clusters up front (create's and resize's preallocation):
   * 'metadata' maps them to clusters that read as zeros from a sparse file,
   * 'falloc' also reserves the space, 'full' also writes the zeros. Clusters
   * from `fromGuest` on that are not allocated yet are preallocated.
   */
  async preallocate(mode: 'metadata' | 'falloc' | 'full', fromGuest = 0): Promise<void> {
    await this.modify(() => this.preallocateLocked(mode, fromGuest));
  }

  private async preallocateLocked(mode: 'metadata' | 'falloc' | 'full', fromGuest: number): Promise<void> {
    const cs = this.clusterSize;
    const total = Math.ceil(this.size / cs);
    for (let index = Math.floor(fromGuest / cs); index < total; ) {
      // A run of clusters without a host cluster yet, within one L2 table.
      const l2End = Math.min(total, (Math.floor(index / this.l2Entries) + 1) * this.l2Entries);
      const olds: Mapping[] = [];
      for (let i = index; i < l2End; i++) {
        const m = await this.lookup(i);
        if (m.kind === 'compressed' || hostOf(m)) break;
        olds.push(m);
      }
      const n = olds.length;
      if (n === 0) {
        index++;
        continue;
      }
      await this.writableL2(Math.floor(index / this.l2Entries));
      const host = await this.allocateData(index, n);
      // Reused clusters inside the file may hold old data: they must read as zeros.
      const fileSize = await this.data.size();
      if (host < fileSize) await zeroStoredData(this.data, host, Math.min(n * cs, fileSize - host));
      // The file must reach past every cluster it maps (qemu-img check calls
      // clusters past the end corrupt); 'metadata' leaves the new space sparse.
      const end = host + n * cs;
      if (fileSize < end) await this.data.truncate(end, mode === 'metadata' ? 'off' : mode);
      await this.setMappings(
        index,
        // With extended L2 entries no subcluster is allocated (as QEMU does):
        // the backing file shows through until written in place.
        olds.map((old, k): Mapping =>
          this.extended
            ? fromSubclusters(host + k * cs, true, 0, this.masks(old).zero)
            : { kind: 'data', host: host + k * cs, copied: true },
        ),
      );
      for (const old of olds) await this.release(old);
      index += n;
    }
  }

  // ---- clusters written by other threads ---------------------------------

  /**
   * A new, empty image (nothing mapped, no backing file, snapshots, bitmaps
   * or data file) lets a threaded copy write its data clusters (see
   * PlacesClusters). Reserved clusters are counted in memory like any new
   * data cluster, so the counts reach the file before the tables mapping
   * them; unused ones are freed again. Not with extended L2 entries: a copy
   * allocates their subclusters one by one, leaving zero ones unallocated.
   */
  clusterPlacement(): ClusterPlacement | undefined {
    // Image.clusterPlacement asks only when the image is writable.
    const fresh =
      !this.extended &&
      !this.backingRef &&
      !this.snapshots.length &&
      !this.externalData &&
      !this.bitmaps &&
      !(this.header.incompatible & L.INCOMPAT_CORRUPT) &&
      this.l1.every((e) => e === 0n);
    if (!fresh) return undefined;
    const cs = this.clusterSize;
    return {
      clusterSize: cs,
      hostStride: cs,
      appendOnly: false,
      reserve: (count) => this.metadata(() => this.refcounts.allocate(count, true)),
      unreserve: (host, count) => this.metadata(() => this.refcounts.free(host, count)),
      map: (guestCluster, host, count) =>
        this.metadata(async () => {
          for (let done = 0; done < count; ) {
            const index = guestCluster + done;
            // One L2 table at a time.
            const n = Math.min(count - done, this.l2Entries - (index % this.l2Entries));
            await this.mapUnmapped(index, host + done * cs, n);
            done += n;
          }
        }),
    };
  }

  /**
   * Maps `count` guest clusters from `index`, all in one L2 table and all
   * unmapped, to the data clusters from `host` (a placed copy's: a
   * standard-L2 image of its own). The entries are written as 32-bit
   * halves: as Mappings, one object, BigInt and awaited lookup per cluster,
   * this cost the 2 GiB bench image's raw->qcow2 about 40 ms.
   */
  private async mapUnmapped(index: number, host: number, count: number): Promise<void> {
    if (this.extended) throw new Error('mapUnmapped needs standard L2 entries');
    const table = await this.writableL2(Math.floor(index / this.l2Entries));
    const w = halvesOf(table.entries);
    const first = index % this.l2Entries;
    for (let k = first; k < first + count; k++) {
      if (w[2 * k + HI] || w[2 * k + LO]) throw new BlockError('InvalidArgument', `guest cluster ${index + k - first} is mapped already`);
    }
    for (let k = 0; k < count; k++) setPlainL2(w, first + k, host + k * this.clusterSize);
    await this.changedL2(table.offset, first, first + count);
  }

  // ---- compressed writes ----------------------------------------------------

  /** 0 when clusters cannot be compressed: an external data file stores them plainly. */
  get compressionCluster(): number {
    return this.externalData ? 0 : this.clusterSize;
  }

  async compressClusters(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    this.checkWritable();
    if (this.externalData) throw new BlockError('Unsupported', 'compressed clusters are not possible with an external data file');
    const cs = this.clusterSize;
    if (offset % cs !== 0 || (buf.length % cs !== 0 && offset + buf.length !== this.size)) {
      throw new BlockError('InvalidArgument', 'compressed writes must cover whole clusters');
    }
    const squeeze = async (i: number) => {
      let cluster = buf.subarray(i * cs, (i + 1) * cs);
      if (cluster.length < cs) {
        const padded = new Uint8Array(cs);
        padded.set(cluster);
        cluster = padded;
      }
      // Stored plainly when compressing does not save anything.
      return { cluster, z: await this.codec.compress(cluster) };
    };
    const packed = await mapLimited(Math.ceil(buf.length / cs), COMPRESS_CONCURRENCY, squeeze);
    return () =>
      this.modifyClusters(...this.clustersOf(offset, buf.length), async () => {
        await this.bitmaps?.track(offset, buf.length);
        for (let i = 0; i < packed.length; i++) {
          const index = offset / cs + i;
          const m = await this.lookup(index);
          const { cluster, z } = packed[i];
          // Compressed data only goes to clusters that hold nothing yet.
          if (!z || !(m.kind === 'unallocated' || (m.kind === 'zero' && !m.host))) {
            await this.writeLocked(cluster.subarray(0, Math.min(cs, this.size - index * cs)), index * cs);
            continue;
          }
          const host = await this.allocBytes(z.length);
          await this.proto.write(z, host);
          await this.setMappings(index, [{ kind: 'compressed', host, length: z.length }]);
        }
      });
  }

  /**
   * Byte-granular space for compressed data, packed one after another; every
   * host cluster a piece touches counts one reference for it.
   */
  private async allocBytes(n: number): Promise<number> {
    const cs = this.clusterSize;
    let host: number;
    const tail = this.compressedTail;
    const room = tail ? cs - (tail % cs) : 0;
    if (tail && n <= room) {
      host = tail;
      await this.refcounts.update(Math.floor(tail / cs), 1, 1);
    } else {
      const extra = tail ? Math.ceil((n - room) / cs) : 0;
      const next = tail ? await this.refcounts.allocate(extra) : -1;
      if (tail && next === tail + room) {
        host = tail;
        await this.refcounts.update(Math.floor(tail / cs), 1, 1);
      } else {
        if (tail) await this.refcounts.free(next, extra);
        host = await this.refcounts.allocate(Math.ceil(n / cs));
      }
    }
    this.compressedTail = (host + n) % cs === 0 ? 0 : host + n;
    return host;
  }

  // ---- size -------------------------------------------------------------

  /** Refuses a new size this image cannot take, before anything changes (resize, amend). */
  checkResize(size: number): void {
    // Version 3 snapshots record their own disk size (applying one restores it); version 2 ones do not.
    if (this.header.nbSnapshots > 0 && this.header.version < 3) {
      throw new BlockError('Unsupported', 'a compat=0.10 image with internal snapshots cannot be resized');
    }
    if (size % 512 !== 0) throw new BlockError('InvalidArgument', 'the size of a qcow2 image must be a multiple of 512');
  }

  async resize(size: number, opts: { prealloc: ResizePreallocation; shrink: boolean }): Promise<void> {
    this.checkWritable();
    this.checkResize(size);
    await this.modify(async () => {
      const cs = this.clusterSize;
      const old = this.size;
      // Growing over a longer backing file: the new area must read as zeros,
      // not as the backing file's data (qemu zeroes it too, and refuses v2).
      const overBacking = size > old && this.backing !== undefined && this.backing.size > old;
      if (overBacking && this.header.version < 3) {
        throw new BlockError(
          'Unsupported',
          'a compat=0.10 image cannot grow over a longer backing file (the new area would show the backing file)',
        );
      }
      await this.bitmaps?.beforeResize(size);
      const needL1 = Math.ceil(size / cs / this.l2Entries);
      if (size < old) {
        const first = Math.ceil(size / cs);
        const last = Math.ceil(old / cs);
        if (last > first) await this.remap(first * cs, last * cs, () => UNALLOCATED);
        // L2 tables wholly past the new end map nothing any more: QEMU frees them too (the L1 table keeps its size).
        for (let i = this.l1.length - 1; i >= needL1; i--) {
          const { offset } = decodeL1(this.l1[i], cs, i);
          if (!offset) continue;
          await this.setL1(i, 0n);
          await this.refcounts.free(offset, 1);
        }
      }
      if (needL1 > this.l1.length) await this.growL1(needL1);
      // The rest of the old last cluster may still hold data from before a
      // shrink (which keeps a partial cluster whole, as QEMU's does): grown
      // back, it must read as zeros. QEMU zeroes it only over a longer backing file.
      const zeroStart = Math.min(size, Math.ceil(old / cs) * cs);
      if (zeroStart > old) {
        const last = (await this.lookup(Math.floor(old / cs))).kind;
        if (overBacking || last === 'data' || last === 'compressed' || last === 'subclusters') await this.writeZeroBytes(old, zeroStart - old);
      }
      if (overBacking) {
        const first = zeroStart / cs;
        const last = Math.ceil(size / cs);
        if (last > first) await this.remap(first * cs, last * cs, () => ({ kind: 'zero', host: 0, copied: false }));
      }
      this.header.size = size;
      await this.writeHeader();
      // A raw data file is the guest: its new part is mapped too, or what is
      // written there through the data file would read as zeros here (QEMU
      // maps it, as create does).
      const prealloc = this.rawData && opts.prealloc === 'off' ? 'metadata' : opts.prealloc;
      // An external data file is the size of the guest, as QEMU keeps it, its
      // new part preallocated as asked (a shrink cuts it in trimFile).
      if (this.externalData && size > old) await this.data.truncate(size, prealloc === 'metadata' ? 'off' : prealloc);
      if (prealloc !== 'off' && size > old) await this.preallocateLocked(prealloc, old);
      if (size < old) await this.trimFile();
    });
  }

  /**
   * After a shrink, the files give back what the image no longer uses, as
   * QEMU's do: refcount blocks that count nothing else are dropped, the
   * file ends after its last cluster in use (Refcounts.trimEnd), and an
   * external data file ends with the guest. Only once no table on disk
   * maps what is cut.
   */
  private async trimFile(): Promise<void> {
    await this.giveBackFreed();
    await this.writeBackDurably();
    if (this.externalData) await this.data.truncate(this.size);
    await this.refcounts.dropEmptyBlocks();
    const end = await this.refcounts.trimEnd();
    if (end < (await this.proto.size())) await this.proto.truncate(end);
  }

  /** Moves the L1 table to a bigger place (written before the header points at it). */
  private async growL1(entries: number): Promise<void> {
    if (entries * 8 > L.MAX_L1_BYTES) throw new BlockError('Unsupported', 'the image would need an L1 table larger than 32 MiB');
    const cs = this.clusterSize;
    const clusters = Math.ceil((entries * 8) / cs);
    const offset = await this.refcounts.allocate(clusters);
    const l1 = new BigUint64Array(entries);
    l1.set(this.l1);
    await this.proto.write(encodeTable(l1, cs), offset);
    await this.proto.flush();
    const old = { offset: this.header.l1TableOffset, clusters: Math.ceil((this.l1.length * 8) / cs) };
    this.l1 = l1;
    this.header.l1TableOffset = offset;
    this.header.l1Size = entries;
    await this.writeHeader();
    if (old.offset && old.clusters) await this.refcounts.free(old.offset, old.clusters);
  }

  async writeHeader(): Promise<void> {
    await this.proto.write(serializeHeader(this.header), 0);
  }

  // ---- the rest -----------------------------------------------------------

  async flush(): Promise<void> {
    if (this.readOnly) return;
    // Data before the metadata that points at it.
    if (this.externalData) await this.data.flush();
    await this.lock.run(() => this.writeBack());
    await this.proto.flush();
    await this.lock.run(() => this.giveBackFreed());
  }

  async close(): Promise<void> {
    await this.ranges.all(() => this.lock.run(async () => {
      if (this.readOnly) return;
      if (this.externalData) await this.data.flush();
      await this.writeBack();
      await this.bitmaps?.store();
      if (this.markedDirty) await this.markClean();
      await this.giveBackFreed();
    }));
    if (this.externalData) await this.data.close();
  }

  async info(): Promise<FormatInfo> {
    const h = this.header;
    const data: Record<string, unknown> = { compat: h.version === 3 ? '1.1' : '0.10', 'compression-type': COMPRESSION_TYPES[h.compressionType] };
    if (h.version === 3) data['lazy-refcounts'] = (h.compatible & L.COMPAT_LAZY_REFCOUNTS) !== 0n;
    const bitmaps = this.bitmaps?.describe() ?? [];
    if (bitmaps.length) data.bitmaps = bitmaps;
    data['refcount-bits'] = 2 ** h.refcountOrder;
    if (h.incompatible & L.INCOMPAT_DATA_FILE) {
      data['data-file'] = h.dataFile;
      data['data-file-raw'] = (h.autoclear & L.AUTOCLEAR_DATA_FILE_RAW) !== 0n;
    }
    if (h.version === 3) {
      data.corrupt = (h.incompatible & L.INCOMPAT_CORRUPT) !== 0n;
      data['extended-l2'] = this.extended;
    }
    return {
      clusterSize: this.clusterSize,
      dirty: (h.incompatible & L.INCOMPAT_DIRTY) !== 0n,
      specific: { type: 'qcow2', data },
      // Version 2 images cannot hold bitmaps (then measure shows no "bitmaps size", as qemu-img).
      bitmaps: h.version >= 3 ? bitmaps.map(({ name, granularity }) => ({ name, granularity })) : undefined,
    };
  }
}
