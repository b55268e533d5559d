/**
 * Persistent dirty bitmaps (qcow2's "bitmaps" extension): the extension and
 * the bitmap directory, validated as QEMU validates them, and the tracking
 * that keeps enabled bitmaps true while Platter writes guest data.
 *
 * QEMU's contract: a bitmap whose in_use flag is set may be stale and is
 * never trusted. So before the first guest write the enabled bitmaps are
 * marked in_use on disk; the bits the writes set are kept; on close the
 * changed bitmap clusters are written to new clusters, a new table and a new
 * directory (in_use clear) are written, the header switches to them, and
 * only then is what they replaced released. A crash at any point leaves the
 * bitmaps in_use (inconsistent, never wrong) and at worst leaks clusters.
 * Disabled bitmaps and bitmaps found in_use are left exactly as they are
 * (a resize takes every bitmap to the new size, and refuses in_use ones).
 *
 * Unlike QEMU, which marks them on a read-write open, Platter marks them at
 * the first write: an open that never writes (check -r, snapshot -c) leaves
 * the directory alone. What a reader sees is the same.
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import type { Qcow2Header } from './header.js';
import * as L from './limits.js';
import type { Refcounts } from './refcounts.js';
import { encodeTable, readTable } from './tables.js';

/** The bitmaps header extension. */
export interface BitmapsExtension {
  nbBitmaps: number;
  directorySize: number;
  directoryOffset: number;
}

/** One bitmap directory entry. */
export interface BitmapEntry {
  tableOffset: number;
  /** Entries in the bitmap table. */
  tableSize: number;
  flags: number;
  granularityBits: number;
  /** The name as stored (written back byte for byte). */
  nameBytes: Uint8Array;
  name: string;
}

/** What `info` lists for a bitmap, in qemu-img's key order. */
export interface BitmapInfo {
  flags: string[];
  name: string;
  granularity: number;
}

const invalid = (msg: string) => new BlockError('InvalidFormat', msg);
const text = new TextDecoder('utf-8', { fatal: false });
const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/** Parses the extension's 24 bytes (the header checked the length; QEMU's checks, in its order). */
export function parseBitmapsExtension(data: Uint8Array, clusterSize: number): BitmapsExtension {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (dv.getUint32(4) !== 0) throw invalid('the bitmaps extension has a reserved field that is not zero');
  const nbBitmaps = dv.getUint32(0);
  if (nbBitmaps > L.MAX_BITMAPS) throw invalid(`the image has ${nbBitmaps} bitmaps (at most ${L.MAX_BITMAPS})`);
  if (nbBitmaps === 0) throw invalid('the bitmaps extension lists zero bitmaps');
  const size = dv.getBigUint64(8);
  const offset = dv.getBigUint64(16);
  if (offset % BigInt(clusterSize) !== 0n) throw invalid(`the bitmap directory offset ${offset} is not aligned to a cluster`);
  if (size > BigInt(L.MAX_BITMAP_DIRECTORY_BYTES)) {
    throw invalid(`the bitmap directory is too large (${size} bytes, at most ${L.MAX_BITMAP_DIRECTORY_BYTES})`);
  }
  if (size === 0n) throw invalid('the bitmap directory is empty');
  if (offset >= BigInt(L.MAX_HOST_OFFSET)) throw invalid(`the bitmap directory offset ${offset} is too large`);
  return { nbBitmaps, directorySize: Number(size), directoryOffset: Number(offset) };
}

export function encodeBitmapsExtension(ext: BitmapsExtension): Uint8Array {
  const out = new Uint8Array(L.BITMAPS_EXTENSION_BYTES);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, ext.nbBitmaps);
  dv.setBigUint64(8, BigInt(ext.directorySize));
  dv.setBigUint64(16, BigInt(ext.directoryOffset));
  return out;
}

/** Clusters of data (one table entry each) a bitmap needs for `imageSize` guest bytes. */
export function bitmapDataClusters(imageSize: number, granularity: number, clusterSize: number): number {
  return Math.ceil(Math.ceil(Math.ceil(imageSize / granularity) / 8) / clusterSize);
}

const entrySize = (nameLength: number, extraData: number) => roundUp(L.BITMAP_ENTRY_HEADER_BYTES + nameLength + extraData, 8);

/** A directory entry's size for a name of `nameLength` bytes and no extra data. */
export const bitmapDirectoryEntrySize = (nameLength: number) => entrySize(nameLength, 0);

/**
 * Parses the bitmap directory `raw` (exactly the extension's size) and
 * checks every entry against the image (QEMU's constraints).
 */
export function parseBitmapDirectory(raw: Uint8Array, nbBitmaps: number, clusterSize: number, imageSize: number): BitmapEntry[] {
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out: BitmapEntry[] = [];
  let at = 0;
  while (at < raw.length) {
    if (at + L.BITMAP_ENTRY_HEADER_BYTES > raw.length) throw invalid('the bitmap directory is broken (an entry runs past its end)');
    if (out.length === nbBitmaps) throw invalid('the bitmap directory holds more bitmaps than the header says');
    const nameSize = dv.getUint16(at + 18);
    const extraSize = dv.getUint32(at + 20);
    if (at + entrySize(nameSize, extraSize) > raw.length) throw invalid('the bitmap directory is broken (an entry runs past its end)');
    if (extraSize !== 0) throw invalid('bitmaps with extra data are not supported');
    const nameBytes = raw.slice(at + L.BITMAP_ENTRY_HEADER_BYTES, at + L.BITMAP_ENTRY_HEADER_BYTES + nameSize);
    const nul = nameBytes.indexOf(0);
    const e: BitmapEntry = {
      tableOffset: 0,
      tableSize: dv.getUint32(at + 8),
      flags: dv.getUint32(at + 12),
      granularityBits: raw[at + 17],
      nameBytes,
      name: text.decode(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)),
    };
    const tableOffset = dv.getBigUint64(at);
    const type = raw[at + 16];
    const problem =
      e.tableSize === 0 || tableOffset === 0n
        ? 'has no bitmap table'
        : tableOffset % BigInt(clusterSize) !== 0n || tableOffset >= BigInt(L.MAX_HOST_OFFSET)
          ? `has its bitmap table at an invalid offset ${tableOffset}`
          : e.tableSize > L.MAX_BITMAP_TABLE_ENTRIES || e.tableSize * clusterSize > L.MAX_BITMAP_DATA_BYTES
            ? `has a bitmap table too large (${e.tableSize} entries)`
            : e.granularityBits < L.MIN_BITMAP_GRANULARITY_BITS || e.granularityBits > L.MAX_BITMAP_GRANULARITY_BITS
              ? `has granularity_bits ${e.granularityBits} (${L.MIN_BITMAP_GRANULARITY_BITS} to ${L.MAX_BITMAP_GRANULARITY_BITS})`
              : e.flags & L.BITMAP_RESERVED_FLAGS
                ? `has unknown flags 0x${e.flags.toString(16)}`
                : nameSize > L.MAX_BITMAP_NAME
                  ? `has a name too long (${nameSize} bytes)`
                  : type !== L.BITMAP_TYPE_DIRTY_TRACKING
                    ? `has unknown type ${type}`
                    : // A consistent bitmap must cover the whole image (an in_use one may be stale from a resize).
                      !(e.flags & L.BITMAP_IN_USE) && e.tableSize * clusterSize * 8 * 2 ** e.granularityBits < imageSize
                      ? 'is too small for the image'
                      : undefined;
    if (problem) throw invalid(`bitmap '${e.name}' ${problem}`);
    e.tableOffset = Number(tableOffset);
    out.push(e);
    at += entrySize(nameSize, extraSize);
  }
  if (out.length !== nbBitmaps) throw invalid('the bitmap directory holds fewer bitmaps than the header says');
  return out;
}

export function encodeBitmapDirectory(entries: readonly BitmapEntry[]): Uint8Array {
  const out = new Uint8Array(entries.reduce((n, e) => n + entrySize(e.nameBytes.length, 0), 0));
  const dv = new DataView(out.buffer);
  let at = 0;
  for (const e of entries) {
    dv.setBigUint64(at, BigInt(e.tableOffset));
    dv.setUint32(at + 8, e.tableSize);
    dv.setUint32(at + 12, e.flags);
    out[at + 16] = L.BITMAP_TYPE_DIRTY_TRACKING;
    out[at + 17] = e.granularityBits;
    dv.setUint16(at + 18, e.nameBytes.length);
    out.set(e.nameBytes, at + L.BITMAP_ENTRY_HEADER_BYTES);
    at += entrySize(e.nameBytes.length, 0);
  }
  return out;
}

/** Reads a bitmap table and checks its entries. */
async function readBitmapTable(proto: Protocol, e: BitmapEntry, clusterSize: number): Promise<BigUint64Array> {
  const table = await readTable(proto, e.tableOffset, e.tableSize);
  for (let i = 0; i < table.length; i++) {
    const v = table[i];
    const offset = v & L.OFFSET_MASK;
    // A data cluster's entry has no "all ones" bit, and an aligned offset.
    const wrong =
      (v & L.BITMAP_TABLE_RESERVED_MASK) !== 0n ||
      (offset !== 0n &&
        ((v & L.BITMAP_TABLE_ALL_ONES) !== 0n || offset % BigInt(clusterSize) !== 0n || offset >= BigInt(L.MAX_HOST_OFFSET)));
    if (wrong) throw invalid(`bitmap '${e.name}' has an invalid bitmap table entry ${i} (0x${v.toString(16)})`);
  }
  return table;
}

/** What a bitmap needs from the open image. */
export interface BitmapHost {
  readonly proto: Protocol;
  readonly header: Qcow2Header;
  readonly refcounts: Refcounts;
  readonly clusterSize: number;
  readonly size: number;
  writeHeader(): Promise<void>;
}

/** Sets bits [first, last] of a little-endian-bit-order bitmap cluster. */
function setBits(buf: Uint8Array, first: number, last: number): void {
  for (let b = first; b <= last && b % 8 !== 0; b++) buf[b >> 3] |= 1 << (b & 7);
  const fullFrom = Math.ceil(first / 8);
  const fullTo = Math.floor((last + 1) / 8);
  if (fullTo > fullFrom) buf.fill(0xff, fullFrom, fullTo);
  for (let b = Math.max(first, fullTo * 8); b <= last; b++) buf[b >> 3] |= 1 << (b & 7);
}

/** Clears bits `from` onwards of a bitmap cluster; whether any was set. */
function clearBitsFrom(buf: Uint8Array, from: number): boolean {
  const byte = from >> 3;
  const keep = (1 << (from & 7)) - 1;
  let any = (buf[byte] & ~keep) !== 0;
  buf[byte] &= keep;
  for (let i = byte + 1; i < buf.length; i++) if (buf[i]) any = true;
  buf.fill(0, byte + 1);
  return any;
}

export class Qcow2Bitmaps {
  /** Bitmaps marked in_use by this session, which it must store on close. */
  private readonly tracked = new Set<BitmapEntry>();
  /** Bits set by this session's writes, per enabled bitmap and bitmap cluster (the old bits are on disk). */
  private readonly newBits = new Map<BitmapEntry, Map<number, Uint8Array>>();

  private constructor(
    private readonly host: BitmapHost,
    /** The directory as it is on disk. */
    public entries: BitmapEntry[],
  ) {}

  /** Reads and checks the directory and, as QEMU does on open, the tables of consistent bitmaps. */
  static async load(host: BitmapHost): Promise<Qcow2Bitmaps | undefined> {
    const ext = host.header.bitmaps;
    if (!ext) return undefined;
    const cs = host.clusterSize;
    const fileSize = await host.proto.size();
    if (ext.directoryOffset + ext.directorySize > fileSize) throw invalid('the bitmap directory lies past the end of the file');
    const raw = new Uint8Array(ext.directorySize);
    await host.proto.read(raw, ext.directoryOffset);
    const entries = parseBitmapDirectory(raw, ext.nbBitmaps, cs, host.size);
    // Tables never share clusters, so together they fit in the file: that
    // bounds the reading below and check's (65535 tables of 8 MiB would not).
    let tableBytes = 0;
    for (const e of entries) {
      if (e.tableOffset + e.tableSize * 8 > fileSize) throw invalid(`bitmap '${e.name}' has its bitmap table past the end of the file`);
      tableBytes += roundUp(e.tableSize * 8, cs);
      if (tableBytes > fileSize) throw invalid('the bitmap tables overlap');
    }
    for (const e of entries) {
      if (e.flags & L.BITMAP_IN_USE) continue;
      if (e.tableSize !== bitmapDataClusters(host.size, 2 ** e.granularityBits, cs)) {
        throw invalid(`bitmap '${e.name}' has a bitmap table of the wrong size for the image`);
      }
      await readBitmapTable(host.proto, e, cs);
    }
    return new Qcow2Bitmaps(host, entries);
  }

  /** Whether [offset, offset+length) overlaps the bitmap directory (QEMU's overlap check covers it). */
  directoryOverlaps(offset: number, length: number): boolean {
    const ext = this.host.header.bitmaps;
    if (!ext) return false;
    const end = roundUp(ext.directoryOffset + ext.directorySize, this.host.clusterSize);
    return offset < end && ext.directoryOffset < offset + length;
  }

  /** The list `info` shows. */
  describe(): BitmapInfo[] {
    return this.entries.map((e) => ({
      flags: [...(e.flags & L.BITMAP_IN_USE ? ['in-use'] : []), ...(e.flags & L.BITMAP_AUTO ? ['auto'] : [])],
      name: e.name,
      granularity: 2 ** e.granularityBits,
    }));
  }

  /**
   * Every host range the bitmaps use (directory, tables, data clusters), for
   * check's refcount rebuild. An invalid table (only an in_use bitmap's can
   * be, the others were checked on open) fails the check, as in qemu-img.
   */
  async references(): Promise<{ offset: number; length: number }[]> {
    const ext = this.host.header.bitmaps!;
    const cs = this.host.clusterSize;
    const refs = [{ offset: ext.directoryOffset, length: ext.directorySize }];
    for (const e of this.entries) {
      refs.push({ offset: e.tableOffset, length: e.tableSize * 8 });
      const table = await readBitmapTable(this.host.proto, e, cs);
      for (const v of table) {
        const offset = Number(v & L.OFFSET_MASK);
        if (offset) refs.push({ offset, length: cs });
      }
    }
    return refs;
  }

  /** Sets in_use on disk for `which` (before anything they describe changes). */
  private async markInUse(which: BitmapEntry[]): Promise<void> {
    const fresh = which.filter((e) => !this.tracked.has(e));
    if (fresh.length === 0) return;
    // Only flags change, in place: each sits in an aligned 8-byte word, and
    // the flush finishes before the guest data or the size changes.
    for (const e of fresh) {
      e.flags |= L.BITMAP_IN_USE;
      this.tracked.add(e);
    }
    await this.host.proto.write(encodeBitmapDirectory(this.entries), this.host.header.bitmaps!.directoryOffset);
    await this.host.proto.flush();
  }

  /** Bitmaps that are consistent on disk or were made in_use by this session. */
  private usable(): BitmapEntry[] {
    return this.entries.filter((e) => this.tracked.has(e) || !(e.flags & L.BITMAP_IN_USE));
  }

  /**
   * Records a guest write of [offset, offset+length), called before the data
   * changes: the first one marks the enabled bitmaps in_use on disk.
   */
  async track(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    const enabled = this.usable().filter((e) => e.flags & L.BITMAP_AUTO);
    if (enabled.length === 0) return;
    await this.markInUse(enabled);
    const cs = this.host.clusterSize;
    const bitsPerCluster = cs * 8;
    for (const e of enabled) {
      let clusters = this.newBits.get(e);
      if (!clusters) this.newBits.set(e, (clusters = new Map()));
      const g = 2 ** e.granularityBits;
      const first = Math.floor(offset / g);
      const last = Math.floor((offset + length - 1) / g);
      for (let ci = Math.floor(first / bitsPerCluster); ci <= Math.floor(last / bitsPerCluster); ci++) {
        let bits = clusters.get(ci);
        if (!bits) clusters.set(ci, (bits = new Uint8Array(cs)));
        const base = ci * bitsPerCluster;
        setBits(bits, Math.max(first, base) - base, Math.min(last, base + bitsPerCluster - 1) - base);
      }
    }
  }

  /**
   * Called before the image changes size to `size`: like QEMU, every bitmap
   * follows the new size (new bits clear), so all are marked in_use until
   * close stores them; an inconsistent bitmap refuses the resize.
   */
  async beforeResize(size: number): Promise<void> {
    const cs = this.host.clusterSize;
    for (const e of this.entries) {
      if (e.flags & L.BITMAP_IN_USE && !this.tracked.has(e)) {
        throw new BlockError('Unsupported', `bitmap '${e.name}' is inconsistent (in use), so the image cannot be resized`);
      }
      const clusters = bitmapDataClusters(size, 2 ** e.granularityBits, cs);
      if (clusters === 0) throw new BlockError('Unsupported', 'an image with persistent bitmaps cannot shrink to nothing');
      if (clusters > L.MAX_BITMAP_TABLE_ENTRIES || clusters * cs > L.MAX_BITMAP_DATA_BYTES) {
        throw new BlockError('Unsupported', `bitmap '${e.name}' would grow too large (its granularity is too fine)`);
      }
    }
    await this.markInUse(this.entries);
  }

  /**
   * Writes the bitmaps marked in_use back, with the recorded writes set and
   * sized for the image, and clears their in_use (on close).
   */
  async store(): Promise<void> {
    // Like QEMU, nothing more is written to an image found corrupt: the bitmaps stay in_use.
    if (this.tracked.size === 0 || this.host.header.incompatible & L.INCOMPAT_CORRUPT) return;
    const { proto, refcounts, header } = this.host;
    const cs = this.host.clusterSize;
    const release: { offset: number; clusters: number }[] = [];
    const next: BitmapEntry[] = [];
    for (const e of this.entries) {
      if (!this.tracked.has(e)) {
        next.push(e);
        continue;
      }
      const table = await this.updatedTable(e, release);
      let tableOffset = e.tableOffset;
      if (table) {
        const raw = encodeTable(table, cs);
        tableOffset = await refcounts.allocate(raw.length / cs);
        await proto.write(raw, tableOffset);
        release.push({ offset: e.tableOffset, clusters: Math.ceil((e.tableSize * 8) / cs) });
      }
      next.push({ ...e, tableOffset, tableSize: table?.length ?? e.tableSize, flags: e.flags & ~L.BITMAP_IN_USE });
    }
    const dir = encodeBitmapDirectory(next);
    const padded = new Uint8Array(roundUp(dir.length, cs));
    padded.set(dir);
    const dirOffset = await refcounts.allocate(padded.length / cs);
    await proto.write(padded, dirOffset);
    await proto.flush();
    const old = header.bitmaps!;
    header.bitmaps = { nbBitmaps: next.length, directorySize: dir.length, directoryOffset: dirOffset };
    await this.host.writeHeader();
    await proto.flush();
    this.entries = next;
    this.tracked.clear();
    this.newBits.clear();
    release.push({ offset: old.directoryOffset, clusters: Math.ceil(old.directorySize / cs) });
    for (const r of release) await refcounts.free(r.offset, r.clusters);
  }

  /**
   * `e`'s table sized for the image, whose clusters with new bits point at
   * new clusters holding the old bits plus the new ones, and whose last
   * cluster has no bits past the end (after a shrink); undefined when nothing
   * changed. The clusters replaced go to `release`.
   */
  private async updatedTable(e: BitmapEntry, release: { offset: number; clusters: number }[]): Promise<BigUint64Array | undefined> {
    const { proto, refcounts } = this.host;
    const cs = this.host.clusterSize;
    const g = 2 ** e.granularityBits;
    const bitsPerCluster = cs * 8;
    const lastBit = Math.ceil(this.host.size / g) - 1;
    const old = await readBitmapTable(proto, e, cs);
    const before = new BigUint64Array(bitmapDataClusters(this.host.size, g, cs));
    before.set(old.subarray(0, before.length));
    for (const v of old.subarray(before.length)) if (v & L.OFFSET_MASK) release.push({ offset: Number(v & L.OFFSET_MASK), clusters: 1 });
    const table = before.slice();
    let changed = before.length !== old.length;

    let cur: { ci: number; buf: Uint8Array; dirty: boolean } | undefined;
    const finish = async () => {
      if (cur?.dirty) {
        const offset = await refcounts.allocate(1);
        await proto.write(cur.buf, offset);
        const was = Number(before[cur.ci] & L.OFFSET_MASK);
        if (was) release.push({ offset: was, clusters: 1 });
        table[cur.ci] = BigInt(offset);
        changed = true;
      }
      cur = undefined;
    };
    const open = async (ci: number) => {
      if (cur?.ci === ci) return cur;
      await finish();
      const buf = new Uint8Array(cs);
      const offset = Number(before[ci] & L.OFFSET_MASK);
      if (offset) await proto.read(buf, offset);
      else if (before[ci] & L.BITMAP_TABLE_ALL_ONES) buf.fill(0xff);
      return (cur = { ci, buf, dirty: false });
    };

    const pending = [...(this.newBits.get(e) ?? [])].filter(([ci]) => ci < before.length).sort((a, b) => a[0] - b[0]);
    for (const [ci, bits] of pending) {
      // An all-ones cluster already has every bit set.
      if (!(before[ci] & L.OFFSET_MASK) && before[ci] & L.BITMAP_TABLE_ALL_ONES) continue;
      const c = await open(ci);
      for (let i = 0; i < cs; i++) c.buf[i] |= bits[i];
      c.dirty = true;
    }
    // Bits past the end (left by a shrink) are cleared, as QEMU truncates its bitmaps.
    const lastCi = Math.floor(lastBit / bitsPerCluster);
    const tail = lastBit + 1 - lastCi * bitsPerCluster;
    if (tail < bitsPerCluster && (before[lastCi] || cur?.ci === lastCi)) {
      const c = await open(lastCi);
      c.dirty = clearBitsFrom(c.buf, tail) || c.dirty;
    }
    await finish();
    return changed ? table : undefined;
  }
}
