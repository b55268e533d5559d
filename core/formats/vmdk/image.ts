/**
 * An open VMDK: its descriptor and extents in guest order. Requests are split
 * at extent boundaries; ranges no extent stores come from the parent image
 * (parentFileNameHint), and the first write of each open gives the disk a
 * new content ID (CID), as QEMU and VMware do.
 */
import { randomInt } from 'node:crypto';
import {
  emptyCheckReport,
  type BackingImage,
  type BackingRef,
  type Checkable,
  type CheckReport,
  type CompressedWrites,
  type FormatImage,
  type FormatInfo,
  type HasBacking,
  type LayerExtent,
  type RepairMode,
} from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { replaceCid, type Descriptor } from './descriptor.js';
import { isWritableExtent, type VmdkExtent } from './extent.js';
import * as L from './limits.js';
import { SparseExtent, type Below } from './sparse.js';
import { StreamExtent } from './stream-extent.js';

export interface Placed {
  extent: VmdkExtent;
  /** Guest offset of the extent's first byte. */
  base: number;
  /** What qemu-img's info calls the extent's format: its descriptor type ('' for a monolithic file). */
  type: string;
  /** The extent's name as the descriptor gives it. */
  name: string;
  /** The descriptor says RW. */
  rw: boolean;
}

/** Where the descriptor text lives, so the CID can be rewritten in place. */
export interface DescriptorPlace {
  file: Protocol;
  offset: number;
  /** Bytes available for it (embedded descriptors); undefined for a descriptor file, which may change length. */
  room?: number;
  text: string;
}

export class VmdkImage implements FormatImage, HasBacking, Checkable, CompressedWrites {
  readonly size: number;
  readonly backingRef?: BackingRef;
  private parent: BackingImage | undefined;
  private cidWritten: Promise<void> | undefined;
  private parentChecked: Promise<void> | undefined;

  constructor(
    private readonly proto: Protocol,
    readonly readOnly: boolean,
    private readonly descriptor: Descriptor,
    /** Where the descriptor is; undefined for a lone ESX sparse file, which has none. */
    private readonly place: DescriptorPlace | undefined,
    private readonly extents: Placed[],
    /** Files opened for extents (closed with the image; the image's own file is its caller's). */
    private readonly ownFiles: Protocol[],
  ) {
    this.size = extents.reduce((n, e) => n + e.extent.length, 0);
    // Same as QEMU: a parent is always a VMDK.
    const parent = descriptor.parentFileNameHint;
    if (parent !== undefined) this.backingRef = { filename: parent, format: 'vmdk' };
  }

  setBacking(backing: BackingImage | undefined): void {
    this.parent = backing;
    this.parentChecked = undefined;
  }

  /** What lies under the extent at guest offset `base`: the parent's bytes, zeros past its end. */
  belowAt(base: number): Below {
    return {
      present: this.parent !== undefined,
      read: async (buf, offset) => {
        buf.fill(0);
        const p = this.parent;
        const guest = base + offset;
        if (!p || guest >= p.size) return;
        await this.checkParentCid(p);
        await p.read(buf.subarray(0, Math.min(buf.length, p.size - guest)), guest);
      },
    };
  }

  /**
   * Same as QEMU (and VMware): a VMDK parent whose CID is not the parentCID
   * this disk was made against has changed since, so what this disk leaves
   * to it is no longer what it was; reading through is refused.
   */
  private checkParentCid(p: BackingImage): Promise<void> {
    this.parentChecked ??= (async () => {
      if (p.format !== 'vmdk' || !p.info) return; // other formats have no CID to compare
      const cid = (await p.info()).specific?.data.cid;
      const want = this.descriptor.parentCid;
      if (typeof cid === 'number' && cid !== want) {
        const hex = (n: number) => n.toString(16).padStart(8, '0');
        throw new BlockError(
          'Corrupt',
          `the parent's CID ${hex(cid)} is not the parentCID ${hex(want)} this disk was made against: the parent changed since`,
        );
      }
    })();
    return this.parentChecked;
  }

  /** The extents `[offset, offset+length)` touches, each with the piece in it. */
  private *pieces(offset: number, length: number): Generator<{ p: Placed; at: number; rel: number; len: number }> {
    let at = 0;
    for (const p of this.extents) {
      const end = p.base + p.extent.length;
      if (offset + at >= end) continue;
      if (at >= length) break;
      const rel = offset + at - p.base;
      const len = Math.min(length - at, end - (offset + at));
      yield { p, at, rel, len };
      at += len;
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    for (const { p, at, rel, len } of this.pieces(offset, buf.length)) {
      const piece = buf.subarray(at, at + len);
      if (!this.parent) {
        await p.extent.read(piece, rel);
        continue;
      }
      const below = this.belowAt(p.base);
      for (let done = 0; done < len; ) {
        const st = await p.extent.blockStatus(rel + done, len - done);
        const part = piece.subarray(done, done + st.length);
        if (st.state === 'unallocated') await below.read(part, rel + done);
        else await p.extent.read(part, rel + done);
        done += st.length;
      }
    }
  }

  private writable(p: Placed) {
    if (this.readOnly) throw new BlockError('InvalidArgument', 'image is open read-only');
    if (!p.rw || !isWritableExtent(p.extent)) throw new BlockError('Unsupported', `the extent ${p.name} cannot be written`);
    return p.extent;
  }

  /** Same as QEMU: the first write of an open gives the disk a new random CID. */
  private newCid(): Promise<void> {
    this.cidWritten ??= (async () => {
      if (!this.place) return;
      const cid = randomInt(0, 2 ** 32 - 1);
      const text = replaceCid(this.place.text, cid);
      const bytes = new TextEncoder().encode(text);
      if (this.place.room !== undefined) {
        if (bytes.length > this.place.room) {
          throw new BlockError('Unsupported', 'the embedded descriptor has no room for a new CID');
        }
        const padded = new Uint8Array(this.place.room);
        padded.set(bytes);
        await this.place.file.write(padded, this.place.offset);
      } else {
        await this.place.file.write(bytes, this.place.offset);
        await this.place.file.truncate(this.place.offset + bytes.length);
      }
      this.place.text = text;
      this.descriptor.cid = cid;
    })();
    return this.cidWritten;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    for (const { p, at, rel, len } of this.pieces(offset, buf.length)) {
      const e = this.writable(p);
      await this.newCid();
      await e.write(buf.subarray(at, at + len), rel);
    }
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    for (const { p, rel, len } of this.pieces(offset, length)) {
      const e = this.writable(p);
      await this.newCid();
      await e.writeZeroes(rel, len, mayUnmap);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    for (const { p, rel, len } of this.pieces(offset, length)) await this.writable(p).discard(rel, len);
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    for (const { p, rel, len } of this.pieces(offset, length)) {
      const st = await p.extent.blockStatus(rel, len);
      const ext: LayerExtent = { ...st, offset, length: Math.min(st.length, len) };
      if (p.extent.file !== this.proto && st.state === 'data') ext.hostFile = p.extent.file;
      return ext;
    }
    throw new BlockError('OutOfBounds', `offset ${offset} is past the end of the disk`);
  }

  async flush(): Promise<void> {
    for (const p of this.extents) if (isWritableExtent(p.extent)) await p.extent.flush();
  }

  async close(): Promise<void> {
    try {
      for (const p of this.extents) await p.extent.close();
    } finally {
      for (const f of this.ownFiles) await f.close().catch(() => undefined);
    }
  }

  /**
   * What QEMU's check does: every grain a table points at must lie inside its
   * file. Nothing is repaired, and like qemu-img no cluster counts are given.
   */
  async check(repair: RepairMode, log: (line: string) => void): Promise<CheckReport> {
    if (repair !== 'none') throw new BlockError('Unsupported', 'vmdk images cannot be repaired');
    const report: CheckReport = emptyCheckReport();
    for (const p of this.extents) {
      if (!(p.extent instanceof SparseExtent)) continue;
      report.corruptions += await p.extent.check(log, p.base);
    }
    return report;
  }

  /** A streamOptimized disk's only extent, whose grains are compressed. */
  private get stream(): StreamExtent | undefined {
    const e = this.extents.length === 1 ? this.extents[0].extent : undefined;
    return e instanceof StreamExtent ? e : undefined;
  }

  get compressesWrites(): boolean {
    return this.stream !== undefined && !this.readOnly;
  }

  /** Grains (or, for flat extents, 64 KiB): qemu-img convert -c works on any VMDK, compressing only streams. */
  get compressionCluster(): number {
    const first = this.extents[0]?.extent;
    return first instanceof SparseExtent ? first.grainBytes : L.DEFAULT_GRAIN_SECTORS * L.SECTOR;
  }

  async compressClusters(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    const stream = this.stream;
    if (!stream) return () => this.write(buf, offset);
    if (this.readOnly) throw new BlockError('InvalidArgument', 'image is open read-only');
    await this.newCid();
    return stream.compressGrains(buf, offset);
  }

  async info(): Promise<FormatInfo> {
    const first = this.extents[0]?.extent;
    const d = this.descriptor;
    let otherFilesAllocated = 0;
    for (const f of this.ownFiles) otherFilesAllocated += (await f.allocatedSize()) ?? 0;
    return {
      clusterSize: first instanceof SparseExtent ? first.grainBytes : undefined,
      otherFilesAllocated,
      specific: {
        type: 'vmdk',
        data: {
          cid: d.cid,
          'parent-cid': d.parentCid,
          'create-type': d.createType,
          extents: this.extents.map((p) => {
            // Key by key in qemu-img's order.
            const e: Record<string, unknown> = {};
            if (p.extent instanceof SparseExtent && p.extent.compressed) e.compressed = true;
            e['virtual-size'] = p.extent.length;
            e.filename = p.extent.file.name;
            if (p.extent instanceof SparseExtent) e['cluster-size'] = p.extent.grainBytes;
            e.format = p.type;
            return e;
          }),
        },
      },
    };
  }
}
