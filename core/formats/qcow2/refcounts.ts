/**
 * qcow2's reference counts: a table of refcount blocks, each an array of
 * 1- to 64-bit counters, one per host cluster. Every allocation increments a
 * counter before the cluster is used, so a crash can leak clusters but never
 * hand out one that is in use.
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { serializeHeader, type Qcow2Header } from './header.js';
import { MAX_HOST_OFFSET, MAX_REFTABLE_BYTES, REFT_RESERVED_MASK } from './limits.js';
import { halvesOf, HI, LO, readTable } from './tables.js';

/** Refcount blocks kept in memory; each is one cluster. */
const BLOCK_CACHE_BYTES = 16 << 20;

export interface RefcountTableLocation {
  offset: number;
  clusters: number;
}

/** The big-endian 32-bit word at byte `o` of `b`. */
const word = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;

function setWord(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}

/**
 * Entry `i` of a refcount block whose entries are `bits` wide (a 64-bit one
 * past 2^53 - 1 reads as that). Byte by byte, allocating nothing: a copy
 * into a new qcow2 reads and writes a count for every cluster, and a
 * DataView per count cost it several ms of garbage collection.
 */
export function readRefcount(b: Uint8Array, i: number, bits: number): number {
  switch (bits) {
    case 64: {
      const hi = word(b, i * 8);
      return hi >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : hi * 2 ** 32 + word(b, i * 8 + 4);
    }
    case 32:
      return word(b, i * 4);
    case 16:
      return (b[i * 2] << 8) | b[i * 2 + 1];
    case 8:
      return b[i];
    default: {
      const bit = i * bits;
      return (b[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
    }
  }
}

/** Sets entry `i` of a refcount block whose entries are `bits` wide (to at most 2^53 - 1). */
export function writeRefcount(b: Uint8Array, i: number, bits: number, v: number): void {
  switch (bits) {
    case 64:
      setWord(b, i * 8, Math.floor(v / 2 ** 32));
      setWord(b, i * 8 + 4, v >>> 0);
      return;
    case 32:
      setWord(b, i * 4, v);
      return;
    case 16:
      b[i * 2] = v >>> 8;
      b[i * 2 + 1] = v;
      return;
    case 8:
      b[i] = v;
      return;
    default: {
      const bit = i * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      b[bit >> 3] = (b[bit >> 3] & ~mask) | ((v << (bit & 7)) & mask);
    }
  }
}

/** How a refcount table entry can be damaged: reserved bits set, a block not on a cluster, or one past any file. */
export type RefcountDamage = 'reserved' | 'misaligned' | 'outside';

export class Refcounts {
  readonly clusterSize: number;
  readonly bits: number;
  /** Counters per refcount block. */
  readonly perBlock: number;
  readonly max: number;
  private table: number[];
  /** The refcount blocks' offsets: allocations and frees must keep off them. */
  private readonly blockOffsets: Set<number>;
  private readonly cache = new Map<number, Uint8Array>();
  /** The block last looked up (the cache's most recent entry). */
  private lastBlock?: { offset: number; bytes: Uint8Array };
  /**
   * Cached blocks with counts raised in memory only (deferred allocations),
   * as byte ranges [from, to): written by writeBack, which the image runs
   * before any table that maps those clusters reaches the file.
   */
  private readonly dirty = new Map<number, { from: number; to: number }>();
  /** No free cluster below this index (a search hint). */
  private freeHint = 0;
  /** Clusters at or past this index are free and past the end of the file. */
  private end: number;
  /** Told of every cluster whose refcount drops to zero (its user forgets what it cached about it). */
  onFreed?: (index: number) => void;
  /** Runs before a refcount drops in the file: whatever still maps the clusters there must be unmapped first. */
  beforeDecrement?: () => Promise<void>;
  /**
   * Which table in use, of those these structures do not describe (L1, L2,
   * snapshot table...), host cluster `c` holds: told by the image, so that
   * damaged refcounts calling it free never get it handed out.
   */
  tableAt?: (c: number) => string | undefined;

  constructor(
    private readonly proto: Protocol,
    clusterBits: number,
    refcountOrder: number,
    private location: RefcountTableLocation,
    table: number[],
    fileSize: number,
    /** Persists a moved refcount table in the image header. */
    private readonly saveLocation: (loc: RefcountTableLocation) => Promise<void>,
  ) {
    this.clusterSize = 2 ** clusterBits;
    this.bits = 2 ** refcountOrder;
    this.perBlock = (this.clusterSize * 8) / this.bits;
    this.max = 2 ** Math.min(this.bits, 53) - 1;
    this.table = table;
    this.blockOffsets = new Set(table.filter((off) => off !== 0));
    this.end = Math.ceil(fileSize / this.clusterSize);
  }

  /**
   * Reads and checks the refcount table. A damaged entry is refused, or,
   * `lenient` (for check), kept in `damaged` and read as no block, so that
   * check can report it and rebuild the structures.
   */
  static async load(
    proto: Protocol,
    clusterBits: number,
    refcountOrder: number,
    loc: RefcountTableLocation,
    saveLocation: (loc: RefcountTableLocation) => Promise<void>,
    lenient = false,
  ): Promise<Refcounts> {
    const clusterSize = 2 ** clusterBits;
    const entries = await readTable(proto, loc.offset, (loc.clusters * clusterSize) / 8);
    const words = halvesOf(entries);
    const table: number[] = [];
    const damaged = new Map<number, { kind: RefcountDamage; offset: bigint }>();
    for (let i = 0; i < entries.length; i++) {
      // Most entries are empty (a new image has one block): no BigInt arithmetic for those.
      if (words[2 * i + HI] === 0 && words[2 * i + LO] === 0) {
        table.push(0);
        continue;
      }
      const e = entries[i];
      // Bits 9-63 are the offset (QEMU's REFT_OFFSET_MASK): high bits must not be dropped silently.
      const offset = e & ~REFT_RESERVED_MASK;
      const possible = offset < BigInt(MAX_HOST_OFFSET);
      const aligned = possible && Number(offset) % clusterSize === 0;
      let kind: RefcountDamage | undefined;
      let why = '';
      if (e & REFT_RESERVED_MASK) [kind, why] = ['reserved', `refcount table entry ${i} has reserved bits set`];
      else if (!possible) [kind, why] = ['outside', `refcount block ${i} is at an impossible offset`];
      else if (!aligned) [kind, why] = ['misaligned', `refcount block ${i} is not cluster aligned (offset ${offset})`];
      if (kind && !lenient) throw new BlockError('Corrupt', why);
      if (kind) damaged.set(i, { kind, offset });
      // Like QEMU, a block is still read past reserved bits; a misaligned one cannot be.
      table.push(aligned && kind !== 'misaligned' ? Number(offset) : 0);
    }
    const rc = new Refcounts(proto, clusterBits, refcountOrder, loc, table, await proto.size(), saveLocation);
    rc.damaged = damaged;
    return rc;
  }

  /**
   * Refcount table entries a lenient load found damaged, by index, with
   * the offset they hold: read as no block, except past reserved bits.
   */
  damaged: ReadonlyMap<number, { kind: RefcountDamage; offset: bigint }> = new Map();

  get tableLocation(): RefcountTableLocation {
    return this.location;
  }

  /** The refcount table's entries (block offsets, 0 for none). */
  get blocks(): readonly number[] {
    return this.table;
  }

  /** The first cluster index past everything allocated. */
  get endCluster(): number {
    return this.end;
  }

  /** Refcount block `index` as stored (not to be modified), or undefined if there is none. */
  blockBytes(index: number): Promise<Uint8Array | undefined> {
    return this.block(index);
  }

  private async block(index: number): Promise<Uint8Array | undefined> {
    const off = this.table[index];
    if (!off) return undefined;
    // Runs of look-ups hit the same block: it is already the most recent.
    if (this.lastBlock?.offset === off) return this.lastBlock.bytes;
    let b = this.cache.get(off);
    if (b) {
      this.cache.delete(off);
      this.cache.set(off, b);
      this.lastBlock = { offset: off, bytes: b };
      return b;
    }
    b = new Uint8Array(this.clusterSize);
    await this.proto.read(b, off);
    this.cache.set(off, b);
    this.lastBlock = { offset: off, bytes: b };
    // Least recently used first; blocks with unwritten counts stay (there are few).
    for (const old of this.cache.keys()) {
      if (this.cache.size * this.clusterSize <= BLOCK_CACHE_BYTES) break;
      if (!this.dirty.has(old)) this.cache.delete(old);
    }
    return b;
  }

  /** The refcount of the cluster at `index`. */
  async get(index: number): Promise<number> {
    const b = await this.block(Math.floor(index / this.perBlock));
    return b ? readRefcount(b, index % this.perBlock, this.bits) : 0;
  }

  /**
   * Adds `delta` to the refcounts of `count` clusters from `index`, creating
   * refcount blocks (and growing the table) as needed. `deferred` raises
   * the counts in memory only, until writeBack.
   */
  async update(index: number, count: number, delta: number, deferred = false): Promise<void> {
    if (delta < 0) await this.beforeDecrement?.();
    for (let at = index; at < index + count; ) {
      const bi = Math.floor(at / this.perBlock);
      const first = at % this.perBlock;
      const n = Math.min(this.perBlock - first, index + count - at);
      // No block counts these clusters: their counts are 0, so a decrement
      // is a corruption, with no block to create for it.
      const b = (await this.block(bi)) ?? (delta < 0 ? undefined : await this.createBlock(bi));
      if (!b) throw underflow(at);
      for (let i = first; i < first + n; i++) {
        const v = readRefcount(b, i, this.bits) + delta;
        if (v < 0) throw underflow(bi * this.perBlock + i);
        if (v > this.max) throw new BlockError('Unsupported', `refcount of cluster ${bi * this.perBlock + i} would exceed ${this.max}`);
        writeRefcount(b, i, this.bits, v);
        if (v === 0) this.onFreed?.(bi * this.perBlock + i);
      }
      if (deferred) this.markDirty(bi, first, n);
      else await this.writeEntries(bi, b, first, n);
      if (delta < 0) this.freeHint = Math.min(this.freeHint, at);
      at += n;
    }
    this.end = Math.max(this.end, index + count);
  }

  /** The bytes holding entries [first, first+n) of a block. */
  private bytesOf(first: number, n: number): { from: number; to: number } {
    return { from: Math.floor((first * this.bits) / 8), to: Math.ceil(((first + n) * this.bits) / 8) };
  }

  /** Writes back the bytes holding entries [first, first+n) of block `bi`. */
  private async writeEntries(bi: number, b: Uint8Array, first: number, n: number): Promise<void> {
    const { from, to } = this.bytesOf(first, n);
    await this.proto.write(b.subarray(from, to), this.table[bi] + from);
  }

  private markDirty(bi: number, first: number, n: number): void {
    const { from, to } = this.bytesOf(first, n);
    const d = this.dirty.get(this.table[bi]);
    this.dirty.set(this.table[bi], d ? { from: Math.min(d.from, from), to: Math.max(d.to, to) } : { from, to });
  }

  /** Blocks holding counts not yet written. */
  get dirtyBlocks(): number {
    return this.dirty.size;
  }

  /**
   * Drops the blocks that count no cluster but (at most) their own: their
   * table entries are cleared on disk, durably, before a block that counts
   * one of them drops that count, so a crash leaks at most.
   */
  async dropEmptyBlocks(): Promise<void> {
    if (this.dirty.size) throw new Error('dropEmptyBlocks needs the counts written back');
    const empty: number[] = [];
    for (let bi = 0; bi < this.table.length; bi++) {
      const off = this.table[bi];
      const b = off ? await this.block(bi) : undefined;
      if (!b) continue;
      const self = off / this.clusterSize;
      const own = Math.floor(self / this.perBlock) === bi ? self % this.perBlock : -1;
      let used = false;
      for (let i = 0; i < this.perBlock && !used; i++) used = i !== own && readRefcount(b, i, this.bits) !== 0;
      if (!used) empty.push(bi);
    }
    if (!empty.length) return;
    const zero = new Uint8Array(8);
    for (const bi of empty) await this.proto.write(zero, this.location.offset + bi * 8);
    await this.proto.flush();
    for (const bi of empty) {
      const off = this.table[bi];
      const self = off / this.clusterSize;
      this.table[bi] = 0;
      this.blockOffsets.delete(off);
      this.cache.delete(off);
      this.lastBlock = undefined;
      // A block counted by another: that count goes (one in its own range went with it).
      if (Math.floor(self / this.perBlock) !== bi) await this.update(self, 1, -1);
      else this.onFreed?.(self);
      this.freeHint = Math.min(this.freeHint, self);
    }
  }

  /** Lowers the end of the image to just past its last cluster in use, and returns it in bytes. */
  async trimEnd(): Promise<number> {
    let last = -1;
    for (let bi = Math.min(this.table.length, Math.ceil(this.end / this.perBlock)) - 1; bi >= 0 && last < 0; bi--) {
      const b = await this.block(bi);
      if (!b) continue;
      for (let i = this.perBlock - 1; i >= 0; i--) {
        if (readRefcount(b, i, this.bits) !== 0) {
          last = bi * this.perBlock + i;
          break;
        }
      }
    }
    this.end = Math.min(this.end, last + 1);
    this.freeHint = Math.min(this.freeHint, this.end);
    return this.end * this.clusterSize;
  }

  /** Writes the counts held in memory only. */
  async writeBack(): Promise<void> {
    for (const [offset, { from, to }] of this.dirty) {
      await this.proto.write(this.cache.get(offset)!.subarray(from, to), offset + from);
      this.dirty.delete(offset);
    }
  }

  /**
   * Finds `n` contiguous free clusters, marks them used and returns the
   * first's offset. `deferred`: counted in memory only until writeBack, for
   * clusters that only tables written after it will point at.
   */
  async allocate(n: number, deferred = false): Promise<number> {
    let start = await this.findFree(n);
    // New refcount blocks may take clusters of the range just found: look again.
    while (await this.ensureBlocks(start, n)) start = await this.findFree(n);
    this.checkNotMetadata(start, n, 'allocate');
    await this.update(start, n, 1, deferred);
    // Step the hint over what was taken, or the next search reads each of its counts again.
    if (start === this.freeHint) this.freeHint = start + n;
    const offset = start * this.clusterSize;
    if (offset + n * this.clusterSize > MAX_HOST_OFFSET) {
      throw new BlockError('Unsupported', 'the image file would grow beyond 8 PiB');
    }
    return offset;
  }

  /** Creates the refcount blocks that would count [index, index+count); true if any was. */
  private async ensureBlocks(index: number, count: number): Promise<boolean> {
    let created = false;
    for (let bi = Math.floor(index / this.perBlock); bi <= Math.floor((index + count - 1) / this.perBlock); bi++) {
      if (!(await this.block(bi))) {
        await this.createBlock(bi);
        created = true;
      }
    }
    return created;
  }

  /** Drops one reference from `n` clusters at `offset`. */
  async free(offset: number, n: number): Promise<void> {
    this.checkNotMetadata(offset / this.clusterSize, n, 'free');
    await this.update(offset / this.clusterSize, n, -1);
  }

  /** Which of the header, the refcount table or a refcount block host cluster `c` holds, if any. */
  metadataAt(c: number): 'image header' | 'refcount table' | 'refcount block' | undefined {
    if (c === 0) return 'image header';
    const rt = this.location.offset / this.clusterSize;
    if (c >= rt && c < rt + this.location.clusters) return 'refcount table';
    if (this.blockOffsets.has(c * this.clusterSize)) return 'refcount block';
    return undefined;
  }

  /**
   * Refuses to hand out or free clusters [index, index+count) that hold the
   * header, the refcount table or a refcount block, or to hand out ones that
   * hold another table in use (tableAt): damaged refcounts can call them
   * free, and reusing them would destroy the image.
   */
  private checkNotMetadata(index: number, count: number, op: 'allocate' | 'free'): void {
    for (let c = index; c < index + count; c++) {
      // Freeing an old table is normal (its replacement is in use by then): only allocations ask the image.
      const what = this.metadataAt(c) ?? (op === 'allocate' ? this.tableAt?.(c) : undefined);
      if (!what) continue;
      throw new BlockError(
        'Corrupt',
        op === 'allocate'
          ? `the refcounts call cluster ${c} free, but it holds the ${what}; repair the image with check -r all`
          : `refusing to free cluster ${c}, which holds the ${what}; repair the image with check -r all`,
      );
    }
  }

  private async findFree(n: number): Promise<number> {
    let start = this.freeHint;
    let run = 0;
    for (let i = this.freeHint; ; i++) {
      if (i >= this.end) return run > 0 ? start : i;
      // Whole blocks that do not exist are free: skip through them quickly.
      if (!this.table[Math.floor(i / this.perBlock)]) {
        if (run === 0) start = i;
        const blockEnd = (Math.floor(i / this.perBlock) + 1) * this.perBlock;
        run += blockEnd - i;
        if (run >= n) return start;
        i = blockEnd - 1;
        continue;
      }
      if ((await this.get(i)) === 0) {
        if (run === 0) start = i;
        if (++run >= n) return start;
      } else {
        run = 0;
        if (i === this.freeHint) this.freeHint = i + 1;
      }
    }
  }

  /**
   * A new, zeroed refcount block for table index `bi`. It lives inside its
   * own range when it can (then it counts itself); elsewhere it is counted
   * by the block that covers it.
   */
  private async createBlock(bi: number): Promise<Uint8Array> {
    if (bi >= this.table.length) {
      await this.growTable(bi + 1);
      const b = await this.block(bi);
      if (b) return b;
    }
    // The block's home must itself be counted by an existing block (or by
    // this one): create the counting block first, then look again.
    let at: number;
    for (;;) {
      at = await this.findFree(1);
      const home = Math.floor(at / this.perBlock);
      if (home === bi || (await this.block(home))) break;
      await this.createBlock(home);
    }
    this.checkNotMetadata(at, 1, 'allocate');
    const b = new Uint8Array(this.clusterSize);
    const offset = at * this.clusterSize;
    if (Math.floor(at / this.perBlock) === bi) {
      writeRefcount(b, at % this.perBlock, this.bits, 1);
      await this.proto.write(b, offset);
    } else {
      // Count it before it is used, so a crash only leaks it.
      await this.update(at, 1, 1);
      await this.proto.write(b, offset);
    }
    this.end = Math.max(this.end, at + 1);
    this.table[bi] = offset;
    this.blockOffsets.add(offset);
    this.cache.set(offset, b);
    this.lastBlock = undefined;
    const entry = new Uint8Array(8);
    new DataView(entry.buffer).setBigUint64(0, BigInt(offset));
    await this.proto.write(entry, this.location.offset + bi * 8);
    return b;
  }

  /**
   * Moves the refcount table to the end of the file with room for at least
   * `minEntries` blocks, together with the blocks that count the new area
   * (QEMU does the same): the new structures are written, then the header
   * switches to them, then the old table is freed.
   */
  private async growTable(minEntries: number): Promise<void> {
    const cs = this.clusterSize;
    const start = this.end;
    let entries = Math.max(minEntries, Math.ceil((this.table.length * 3) / 2));
    let tableClusters = 0;
    let newBlocks: number[] = [];
    for (;;) {
      tableClusters = Math.ceil((entries * 8) / cs);
      // Before counting blocks: for a table far over the limit, that takes seconds.
      if (tableClusters * cs > MAX_REFTABLE_BYTES) {
        throw new BlockError('Unsupported', 'the image would need a refcount table larger than 8 MiB');
      }
      // Blocks needed so that every cluster of the new area is counted.
      let areaEnd = start + tableClusters;
      for (;;) {
        newBlocks = [];
        for (let bi = Math.floor(start / this.perBlock); bi <= Math.floor((areaEnd - 1) / this.perBlock); bi++) {
          if (!this.table[bi]) newBlocks.push(bi);
        }
        const end = start + tableClusters + newBlocks.length;
        if (end === areaEnd) break;
        areaEnd = end;
      }
      const needed = Math.ceil(areaEnd / this.perBlock);
      if (entries >= needed) break;
      entries = needed;
    }
    const areaEnd = start + newBlocks.length + tableClusters;
    this.checkNotMetadata(start, areaEnd - start, 'allocate');
    const table = [...this.table];
    while (table.length < entries) table.push(0);
    const blocks = new Map<number, Uint8Array>();
    newBlocks.forEach((bi, k) => {
      table[bi] = (start + k) * cs;
      blocks.set(bi, new Uint8Array(cs));
    });
    // Count the area: in the new blocks directly, in existing ones through update().
    const oldBlocksToUpdate: number[] = [];
    for (let c = start; c < areaEnd; c++) {
      const bi = Math.floor(c / this.perBlock);
      const nb = blocks.get(bi);
      if (nb) writeRefcount(nb, c % this.perBlock, this.bits, 1);
      else oldBlocksToUpdate.push(c);
    }
    for (const c of oldBlocksToUpdate) await this.update(c, 1, 1);
    for (const [bi, b] of blocks) {
      await this.proto.write(b, table[bi]);
      this.cache.set(table[bi], b);
      this.lastBlock = undefined;
    }
    const tableOffset = (start + newBlocks.length) * cs;
    const raw = new Uint8Array(tableClusters * cs);
    const dv = new DataView(raw.buffer);
    table.forEach((off, i) => dv.setBigUint64(i * 8, BigInt(off)));
    await this.proto.write(raw, tableOffset);
    await this.proto.flush();
    const old = this.location;
    this.location = { offset: tableOffset, clusters: tableClusters };
    this.table = table;
    for (const bi of newBlocks) this.blockOffsets.add(table[bi]);
    this.end = Math.max(this.end, areaEnd);
    await this.saveLocation(this.location);
    await this.free(old.offset, old.clusters);
  }
}

function underflow(cluster: number): BlockError {
  return new BlockError('Corrupt', `refcount of cluster ${cluster} would drop below zero`);
}

/** The refcount structures the header names; a moved table is saved back into `header`. `lenient`: see Refcounts.load. */
export function loadRefcounts(proto: Protocol, header: Qcow2Header, lenient = false): Promise<Refcounts> {
  return Refcounts.load(
    proto,
    header.clusterBits,
    header.refcountOrder,
    { offset: header.refcountTableOffset, clusters: header.refcountTableClusters },
    async (loc) => {
      header.refcountTableOffset = loc.offset;
      header.refcountTableClusters = loc.clusters;
      await proto.write(serializeHeader(header), 0);
    },
    lenient,
  );
}
