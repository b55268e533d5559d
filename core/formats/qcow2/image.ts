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
import { promisify } from 'node:util';
import { deflateRaw, inflateRawSync } from 'node:zlib';
import type {
  BackingRef,
  Checkable,
  CheckReport,
  CompressedWrites,
  FormatImage,
  FormatInfo,
  HasBacking,
  LayerExtent,
  RepairMode,
  Resizable,
  SnapshotInfo,
  Snapshots,
} from '../../image/driver.js';
import { applySnapshot, createSnapshot, deleteSnapshot, describeSnapshots } from './snapshots.js';
import { checkQcow2 } from './check.js';
import { BlockError } from '../../image/errors.js';
import type { Preallocation, Protocol } from '../../io/protocol.js';
import { serializeHeader, type Qcow2Header } from './header.js';
import { decodeL1, decodeL2, encodeL2, UNALLOCATED, type Mapping } from './l2.js';
import * as L from './limits.js';
import { Refcounts } from './refcounts.js';
import { encodeTable, readTable } from './tables.js';
import type { SnapshotEntry } from './snapshot-table.js';

/** L2 tables kept in memory. */
const L2_CACHE_BYTES = 32 << 20;

interface Backing {
  read(buf: Uint8Array, offset: number): Promise<void>;
  size: number;
}

/** A simple async mutex: metadata changes happen one at a time. */
class Mutex {
  private tail: Promise<void> = Promise.resolve();
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise((r) => (release = r));
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

const deflate = promisify(deflateRaw);
/** Clusters one compressClusters call deflates at once. */
const COMPRESS_CONCURRENCY = 4;

export class Qcow2Image implements FormatImage, Resizable, HasBacking, CompressedWrites, Checkable, Snapshots {
  readonly clusterSize: number;
  readonly clusterBits: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  private l1: BigUint64Array;
  private readonly l2Cache = new Map<number, BigUint64Array>();
  private backing?: Backing;
  private readonly lock = new Mutex();
  private lastCompressed?: { host: number; data: Uint8Array };
  /** Where the next compressed cluster may be packed (0: start a new host cluster). */
  private compressedTail = 0;

  constructor(
    readonly proto: Protocol,
    readonly header: Qcow2Header,
    l1: BigUint64Array,
    readonly refcounts: Refcounts,
    readonly readOnly: boolean,
    /** Internal snapshots, as the snapshot table lists them. */
    public snapshots: SnapshotEntry[] = [],
  ) {
    this.clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.l2Entries = this.clusterSize / 8;
    this.l1 = l1;
    // Read-only views (a snapshot's) share the refcounts but never free anything.
    if (!readOnly) refcounts.onFreed = (c) => this.forgetCluster(c);
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
    if (this.compressedTail && Math.floor(this.compressedTail / cs) === c) this.compressedTail = 0;
    if (this.lastCompressed && Math.floor(this.lastCompressed.host / cs) === c) this.lastCompressed = undefined;
  }

  get size(): number {
    return this.header.size;
  }

  /** The active L1 table's raw entries. */
  get l1Table(): BigUint64Array {
    return this.l1;
  }

  /** Runs `fn` with no write in progress (check and snapshots need a still image). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.readOnly ? this.lock.run(fn) : this.modify(fn);
  }

  /** Opened to be repaired: a corrupt image may then be written by check. */
  repairing = false;

  /** Set once this session has marked the image dirty (lazy refcounts). */
  private markedDirty = false;

  /**
   * Runs a change under the lock. With lazy refcounts the image is marked
   * dirty first (QEMU's contract: refcounts may lag until a clean close, and
   * a dirty image has them rebuilt on its next read-write open). Platter's
   * own refcount updates are never lazy, so the mark only tells others.
   */
  private modify<T>(fn: () => Promise<T>): Promise<T> {
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

  /** Clears the dirty mark once everything is on disk (a clean close, or after a repair). */
  async markClean(): Promise<void> {
    if (!(this.header.incompatible & L.INCOMPAT_DIRTY)) return;
    await this.proto.flush();
    this.header.incompatible &= ~L.INCOMPAT_DIRTY;
    await this.writeHeader();
    await this.proto.flush();
    this.markedDirty = false;
  }

  /** Forgets cached L2 tables (after tables were rewritten behind the cache). */
  dropL2Cache(): void {
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

  // ---- mapping --------------------------------------------------------

  private async l2Table(offset: number): Promise<BigUint64Array> {
    let t = this.l2Cache.get(offset);
    if (t) {
      this.l2Cache.delete(offset);
      this.l2Cache.set(offset, t);
      return t;
    }
    const overlap = this.metadataOverlap(offset, this.clusterSize, false);
    if (overlap) throw new BlockError('Corrupt', `an L2 table at offset ${offset} overlaps the ${overlap}`);
    t = await readTable(this.proto, offset, this.l2Entries);
    this.l2Cache.set(offset, t);
    while (this.l2Cache.size * this.clusterSize > L2_CACHE_BYTES) this.l2Cache.delete(this.l2Cache.keys().next().value!);
    return t;
  }

  /** What guest cluster `index` is. */
  async lookup(index: number): Promise<Mapping> {
    const l1i = Math.floor(index / this.l2Entries);
    if (l1i >= this.l1.length) return UNALLOCATED;
    const { offset } = decodeL1(this.l1[l1i], this.clusterSize, l1i);
    if (!offset) return UNALLOCATED;
    const t = await this.l2Table(offset);
    const i = index % this.l2Entries;
    return decodeL2(t[i], this.clusterBits, this.header.version, () => `L2 entry for guest cluster ${index}`);
  }

  /**
   * Which metadata structure [offset, offset+length) would overlap, if any
   * (QEMU's overlap check): data must never land on tables.
   */
  private metadataOverlap(offset: number, length: number, checkL2: boolean): string | undefined {
    const cs = this.clusterSize;
    const hits = (start: number, len: number) => offset < start + len && start < offset + length;
    if (hits(0, cs)) return 'image header';
    if (this.l1.length && hits(this.header.l1TableOffset, Math.ceil((this.l1.length * 8) / cs) * cs)) return 'L1 table';
    // The header, refcount table and blocks: a lookup per cluster, not a scan of the table.
    for (let c = Math.floor(offset / cs); c * cs < offset + length; c++) {
      const what = this.refcounts.metadataAt(c);
      if (what) return what;
    }
    if (this.header.nbSnapshots && hits(this.header.snapshotsOffset, cs)) return 'snapshot table';
    if (checkL2) for (const t of this.l2Cache.keys()) if (hits(t, cs)) return 'an L2 table';
    return undefined;
  }

  // ---- reading ----------------------------------------------------------

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.clusterSize;
    // Contiguous host data is read with one request.
    let run: { dst: number; host: number; len: number } | undefined;
    const flushRun = async () => {
      if (run) await this.proto.read(buf.subarray(run.dst, run.dst + run.len), run.host);
      run = undefined;
    };
    for (let done = 0; done < buf.length; ) {
      const guest = offset + done;
      const index = Math.floor(guest / cs);
      const inCluster = guest % cs;
      const len = Math.min(cs - inCluster, buf.length - done);
      const m = await this.lookup(index);
      if (m.kind === 'data') {
        const host = m.host + inCluster;
        if (run && run.host + run.len === host) run.len += len;
        else {
          await flushRun();
          run = { dst: done, host, len };
        }
      } else {
        await flushRun();
        await this.readOther(m, buf.subarray(done, done + len), guest, inCluster);
      }
      done += len;
    }
    await flushRun();
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
      data = inflateRawSync(raw, { maxOutputLength: this.clusterSize, finishFlush: 2 /* Z_SYNC_FLUSH */ });
    } catch (err) {
      throw new BlockError('Corrupt', `compressed cluster at ${host} does not decompress`, {}, err);
    }
    if (data.length < this.clusterSize) {
      const full = new Uint8Array(this.clusterSize);
      full.set(data);
      data = full;
    }
    this.lastCompressed = { host, data };
    return data;
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    const cs = this.clusterSize;
    const first = await this.lookup(Math.floor(offset / cs));
    const inCluster = offset % cs;
    const state = first.kind === 'data' || first.kind === 'compressed' ? 'data' : first.kind === 'zero' ? 'zero' : 'unallocated';
    const host = first.kind === 'data' || (first.kind === 'zero' && first.host) ? first.host : undefined;
    let len = Math.min(cs - inCluster, length);
    // Extend over following clusters of the same kind (and contiguous host offsets).
    while (len < length) {
      const index = Math.floor((offset + len) / cs);
      const l1i = Math.floor(index / this.l2Entries);
      if (first.kind === 'unallocated' && (l1i >= this.l1.length || !decodeL1(this.l1[l1i], cs, l1i).offset)) {
        // No L2 table: its whole range is unallocated, in one step (not one per cluster).
        len += Math.min(((l1i + 1) * this.l2Entries - index) * cs, length - len);
        continue;
      }
      const m = await this.lookup(index);
      if (m.kind !== first.kind) break;
      if (m.kind === 'compressed') break;
      if (host !== undefined) {
        const h = m.kind === 'data' || m.kind === 'zero' ? m.host : undefined;
        if (h !== host + (index * cs - (offset - inCluster))) break;
      } else if (m.kind === 'zero' && m.host) break;
      len += Math.min(cs, length - len);
    }
    return {
      offset,
      length: len,
      state,
      hostOffset: host === undefined ? undefined : host + inCluster,
      compressed: first.kind === 'compressed',
    };
  }

  // ---- writing ----------------------------------------------------------

  private checkWritable(): void {
    if (this.readOnly) throw new BlockError('InvalidArgument', 'image is open read-only');
    if (this.header.incompatible & L.INCOMPAT_CORRUPT && !this.repairing) {
      throw new BlockError('Corrupt', 'the image is marked corrupt; repair it with check -r all before writing');
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable();
    await this.modify(() => this.writeLocked(buf, offset));
  }

  private async writeLocked(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.clusterSize;
    let done = 0;
    while (done < buf.length) {
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
        const host = m.host + (guest % cs);
        const overlap = this.metadataOverlap(host, len, true);
        if (overlap) await this.signalCorruption(`a data cluster at ${m.host} overlaps the ${overlap}`);
        await this.proto.write(buf.subarray(done, done + len), host);
        done += len;
        continue;
      }
      // Allocate: every following cluster in this L2 table that also needs it.
      const l2End = (Math.floor(index / this.l2Entries) + 1) * this.l2Entries;
      const lastIndex = Math.min(Math.floor((offset + buf.length - 1) / cs), l2End - 1);
      const olds: Mapping[] = [m];
      for (let i = index + 1; i <= lastIndex; i++) {
        const n = await this.lookup(i);
        if (n.kind === 'data' && n.copied) break;
        olds.push(n);
      }
      // Copy-on-write releases the old clusters: they must not be metadata.
      for (const old of olds) await this.refuseMetadataMapping(old);
      const count = olds.length;
      const start = index * cs;
      const end = Math.min(start + count * cs, offset + buf.length);
      let data: Uint8Array;
      if (guest === start && end === start + count * cs) {
        // Whole clusters: written straight from the caller's buffer.
        data = buf.subarray(done, done + count * cs);
      } else {
        data = new Uint8Array(count * cs);
        // Copy-on-write: the parts of the first and last cluster this write leaves alone.
        if (guest > start) await this.readCluster(olds[0], data.subarray(0, cs), start);
        if (end < start + count * cs) {
          const lastStart = start + (count - 1) * cs;
          if (count > 1 || guest === start) await this.readCluster(olds[count - 1], data.subarray((count - 1) * cs), lastStart);
        }
        data.set(buf.subarray(done, done + (end - guest)), guest - start);
      }
      const host = await this.refcounts.allocate(count);
      await this.proto.write(data, host);
      await this.setMappings(
        index,
        olds.map((_, k) => ({ kind: 'data', host: host + k * cs, copied: true })),
      );
      for (const old of olds) await this.release(old);
      done += end - guest;
    }
  }

  /** Refuses to copy or release a guest cluster whose host cluster holds metadata. */
  private async refuseMetadataMapping(m: Mapping): Promise<void> {
    if ((m.kind !== 'data' && m.kind !== 'zero') || !m.host) return;
    const overlap = this.metadataOverlap(m.host, this.clusterSize, false);
    if (overlap) await this.signalCorruption(`a data cluster at ${m.host} overlaps the ${overlap}`);
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

  /** The whole content of a guest cluster as `m` maps it (for copy-on-write). */
  private async readCluster(m: Mapping, dst: Uint8Array, guest: number): Promise<void> {
    if (m.kind === 'data') await this.proto.read(dst, m.host);
    else await this.readOther(m, dst, guest, 0);
  }

  /** Drops the references an old mapping held. */
  private async release(m: Mapping): Promise<void> {
    const cs = this.clusterSize;
    if (m.kind === 'data' || (m.kind === 'zero' && m.host)) {
      await this.refcounts.free(m.host, 1);
    } else if (m.kind === 'compressed') {
      const first = Math.floor(m.host / cs);
      const last = Math.floor((m.host + m.length - 1) / cs);
      for (let c = first; c <= last; c++) await this.refcounts.free(c * cs, 1);
    }
  }

  /**
   * Points guest clusters [index, index + mappings.length) (all in one L2
   * table) at `mappings`, creating or copying the L2 table as needed.
   */
  private async setMappings(index: number, mappings: Mapping[]): Promise<void> {
    const l1i = Math.floor(index / this.l2Entries);
    if (l1i >= this.l1.length) throw new BlockError('OutOfBounds', `guest cluster ${index} is past the L1 table`);
    const table = await this.writableL2(l1i);
    const first = index % this.l2Entries;
    mappings.forEach((m, k) => (table.entries[first + k] = encodeL2(m, this.clusterBits)));
    const raw = new Uint8Array(mappings.length * 8);
    const dv = new DataView(raw.buffer);
    mappings.forEach((_, k) => dv.setBigUint64(k * 8, table.entries[first + k]));
    await this.proto.write(raw, table.offset + first * 8);
  }

  /** The L2 table for L1 index `l1i`, allocated or un-shared so it can be modified. */
  private async writableL2(l1i: number): Promise<{ offset: number; entries: BigUint64Array }> {
    const cur = decodeL1(this.l1[l1i], this.clusterSize, l1i);
    if (cur.offset && cur.copied) return { offset: cur.offset, entries: await this.l2Table(cur.offset) };
    const entries = new BigUint64Array(this.l2Entries);
    if (cur.offset) {
      // Shared with a snapshot: copy it; entries whose clusters are shared lose COPIED.
      const old = await this.l2Table(cur.offset);
      for (let i = 0; i < old.length; i++) {
        let e = old[i];
        const m = decodeL2(e, this.clusterBits, this.header.version, () => `L2 entry ${i}`);
        if ((m.kind === 'data' || m.kind === 'zero') && m.host && (await this.refcounts.get(m.host / this.clusterSize)) !== 1) {
          e &= ~L.OFLAG_COPIED;
        }
        entries[i] = e;
      }
    }
    const offset = await this.refcounts.allocate(1);
    await this.proto.write(encodeTable(entries, this.clusterSize), offset);
    this.l2Cache.set(offset, entries);
    await this.setL1(l1i, BigInt(offset) | L.OFLAG_COPIED);
    if (cur.offset) await this.refcounts.free(cur.offset, 1);
    return { offset, entries };
  }

  /** Rewrites one L1 entry (check's flag repair). */
  rewriteL1Entry(i: number, e: bigint): Promise<void> {
    return this.setL1(i, e);
  }

  /** Rewrites one entry of the L2 table at `offset` (check's flag repair). */
  async rewriteL2Entry(offset: number, i: number, e: bigint): Promise<void> {
    const table = await this.l2Table(offset);
    table[i] = e;
    const raw = new Uint8Array(8);
    new DataView(raw.buffer).setBigUint64(0, e);
    await this.proto.write(raw, offset + i * 8);
  }

  check(repair: RepairMode, log: (line: string) => void): Promise<CheckReport> {
    return checkQcow2(this, repair, log);
  }

  listSnapshots(): SnapshotInfo[] {
    return describeSnapshots(this);
  }

  async createSnapshot(name: string): Promise<void> {
    this.checkWritable();
    await createSnapshot(this, name);
  }

  async applySnapshot(idOrName: string): Promise<void> {
    this.checkWritable();
    await applySnapshot(this, idOrName);
  }

  async deleteSnapshot(idOrName: string): Promise<void> {
    this.checkWritable();
    await deleteSnapshot(this, idOrName);
  }

  /** Overwrites the active L1 table in place with `l1` (same size). */
  async replaceL1(l1: BigUint64Array): Promise<void> {
    if (l1.length) await this.proto.write(encodeTable(l1, 8), this.header.l1TableOffset);
    this.l1 = l1;
  }

  /** growL1 for callers that already hold the lock. */
  growL1Locked(entries: number): Promise<void> {
    return this.growL1(entries);
  }

  private async setL1(i: number, e: bigint): Promise<void> {
    this.l1[i] = e;
    const raw = new Uint8Array(8);
    new DataView(raw.buffer).setBigUint64(0, e);
    await this.proto.write(raw, this.header.l1TableOffset + i * 8);
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.checkWritable();
    await this.modify(async () => {
      const cs = this.clusterSize;
      const head = Math.min(length, (cs - (offset % cs)) % cs);
      const tail = (offset + length) % cs;
      const fullStart = offset + head;
      const fullEnd = offset + length - (length - head > 0 ? tail : 0);
      const canFlag = this.header.version >= 3 || !this.backing;
      if (!canFlag) return this.writeZeroBytes(offset, length);
      if (head) await this.writeZeroBytes(offset, head);
      if (fullEnd > fullStart) {
        await this.remap(fullStart / cs, (fullEnd - fullStart) / cs, (old) => {
          // Version 2 without a backing file: unallocated reads as zeros.
          if (this.header.version < 3) return UNALLOCATED;
          if (!mayUnmap && (old.kind === 'data' || old.kind === 'zero') && old.host && old.copied) {
            return { kind: 'zero', host: old.host, copied: true };
          }
          return { kind: 'zero', host: 0, copied: false };
        });
      }
      if (tail && fullEnd >= fullStart && offset + length > fullEnd) await this.writeZeroBytes(fullEnd, offset + length - fullEnd);
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
    const cs = this.clusterSize;
    const first = Math.ceil(offset / cs);
    const last = Math.floor((offset + length) / cs);
    if (last <= first) return;
    await this.modify(() =>
      // With a backing file, a discarded cluster must not show the backing data.
      this.remap(first, last - first, () =>
        this.backing && this.header.version >= 3 ? { kind: 'zero', host: 0, copied: false } : UNALLOCATED,
      ),
    );
  }

  /** Sets each cluster in the range to `next(old)` and releases what the old mapping held. */
  private async remap(index: number, count: number, next: (old: Mapping) => Mapping): Promise<void> {
    for (let at = index; at < index + count; ) {
      const l2End = (Math.floor(at / this.l2Entries) + 1) * this.l2Entries;
      const n = Math.min(l2End, index + count) - at;
      const olds: Mapping[] = [];
      for (let i = 0; i < n; i++) olds.push(await this.lookup(at + i));
      for (const old of olds) await this.refuseMetadataMapping(old);
      const news = olds.map(next);
      const changed = olds.some((o, i) => encodeL2(o, this.clusterBits) !== encodeL2(news[i], this.clusterBits));
      if (changed) {
        await this.setMappings(at, news);
        for (let i = 0; i < n; i++) {
          const kept = (news[i].kind === 'zero' || news[i].kind === 'data') && (news[i] as { host: number }).host;
          if (!kept) await this.release(olds[i]);
        }
      }
      at += n;
    }
  }

  /**
   * Allocates every guest cluster up front (create's preallocation):
   * 'metadata' maps them to clusters that read as zeros from a sparse file,
   * 'falloc' also reserves the space, 'full' also writes the zeros.
   */
  async preallocate(mode: 'metadata' | 'falloc' | 'full'): Promise<void> {
    const cs = this.clusterSize;
    const total = Math.ceil(this.size / cs);
    await this.modify(async () => {
      for (let index = 0; index < total; ) {
        const n = Math.min(total - index, (Math.floor(index / this.l2Entries) + 1) * this.l2Entries - index);
        await this.writableL2(Math.floor(index / this.l2Entries));
        const host = await this.refcounts.allocate(n);
        await this.setMappings(
          index,
          Array.from({ length: n }, (_, k): Mapping => ({ kind: 'data', host: host + k * cs, copied: true })),
        );
        // The file must reach past every cluster it maps (qemu-img check calls
        // clusters past the end corrupt); 'metadata' leaves the new space sparse.
        const end = host + n * cs;
        if ((await this.proto.size()) < end) await this.proto.truncate(end, mode === 'metadata' ? 'off' : mode);
        index += n;
      }
    });
  }

  // ---- compressed writes ----------------------------------------------------

  get compressionCluster(): number {
    return this.clusterSize;
  }

  async compressClusters(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    this.checkWritable();
    const cs = this.clusterSize;
    if (offset % cs !== 0 || (buf.length % cs !== 0 && offset + buf.length !== this.size)) {
      throw new BlockError('InvalidArgument', 'compressed writes must cover whole clusters');
    }
    // QEMU's parameters: raw deflate with a 4 KiB window.
    const squeeze = async (i: number) => {
      let cluster = buf.subarray(i * cs, (i + 1) * cs);
      if (cluster.length < cs) {
        const padded = new Uint8Array(cs);
        padded.set(cluster);
        cluster = padded;
      }
      const z = new Uint8Array(await deflate(cluster, { windowBits: 12, memLevel: 9 }));
      // Stored plainly when compressing does not save anything.
      return { cluster, z: z.length < cs ? z : undefined };
    };
    // A few at a time per call: each deflate stream holds ~270 KiB, and the
    // copy pipeline already runs several calls at once.
    const packed: Awaited<ReturnType<typeof squeeze>>[] = [];
    const count = Math.ceil(buf.length / cs);
    for (let i = 0; i < count; i += COMPRESS_CONCURRENCY) {
      const batch = Array.from({ length: Math.min(COMPRESS_CONCURRENCY, count - i) }, (_, k) => squeeze(i + k));
      packed.push(...(await Promise.all(batch)));
    }
    return () =>
      this.modify(async () => {
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

  async resize(size: number, opts: { prealloc: Preallocation; shrink: boolean }): Promise<void> {
    this.checkWritable();
    if (this.header.nbSnapshots > 0) throw new BlockError('Unsupported', 'an image with internal snapshots cannot be resized');
    if (opts.prealloc !== 'off') throw new BlockError('Unsupported', 'preallocation when resizing a qcow2 image is not supported yet');
    if (size % 512 !== 0) throw new BlockError('InvalidArgument', 'the size of a qcow2 image must be a multiple of 512');
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
      if (size < old) {
        const first = Math.ceil(size / cs);
        const last = Math.ceil(old / cs);
        if (last > first) await this.remap(first, last - first, () => UNALLOCATED);
      }
      const needL1 = Math.ceil(size / cs / this.l2Entries);
      if (needL1 > this.l1.length) await this.growL1(needL1);
      if (overBacking) {
        const zeroStart = Math.min(size, Math.ceil(old / cs) * cs);
        if (zeroStart > old) await this.writeZeroBytes(old, zeroStart - old);
        const first = zeroStart / cs;
        const last = Math.ceil(size / cs);
        if (last > first) await this.remap(first, last - first, () => ({ kind: 'zero', host: 0, copied: false }));
      }
      this.header.size = size;
      await this.writeHeader();
    });
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
    if (!this.readOnly) await this.proto.flush();
  }

  async close(): Promise<void> {
    await this.lock.run(async () => {
      if (!this.readOnly && this.markedDirty) await this.markClean();
    });
  }

  async info(): Promise<FormatInfo> {
    const h = this.header;
    const data: Record<string, unknown> = { compat: h.version === 3 ? '1.1' : '0.10', 'compression-type': 'zlib' };
    if (h.version === 3) data['lazy-refcounts'] = (h.compatible & L.COMPAT_LAZY_REFCOUNTS) !== 0n;
    data['refcount-bits'] = 2 ** h.refcountOrder;
    if (h.version === 3) {
      data.corrupt = (h.incompatible & L.INCOMPAT_CORRUPT) !== 0n;
      data['extended-l2'] = false;
    }
    return {
      clusterSize: this.clusterSize,
      dirty: (h.incompatible & L.INCOMPAT_DIRTY) !== 0n,
      specific: { type: 'qcow2', data },
      bitmapsSize: h.otherExtensions.some((e) => e.type === L.EXT_BITMAPS) ? 'unknown' : 0,
    };
  }
}
