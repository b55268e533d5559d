/**
 * A compressed sparse extent (streamOptimized): grains are deflated and
 * appended after a marker, once each. As VMware streams it, the grain tables
 * are kept in memory and written with the footer by close(); as QEMU makes
 * it (tables after the header), table entries are updated in place.
 */
import { BlockError } from '../../image/errors.js';
import { Mutex } from '../../image/locks.js';
import { COMPRESS_CONCURRENCY, mapLimited } from '../../image/parallel.js';
import * as L from './limits.js';
import { SparseExtent, type SparseParts } from './sparse.js';
import { compressGrain, putGrain, storedGrainBytes, writeStreamTail } from './stream.js';

export class StreamExtent extends SparseExtent {
  private readonly tablesAtEnd: boolean;
  /** Where the tables at the end start; the first write cuts them off to append grains there. */
  private tailSector: number | undefined;
  private tailDirty = false;
  /**
   * Grains being filled by writes smaller than a grain (zero runs split them;
   * with out-of-order writes, several at once). Each is compressed and
   * appended once full, or at close.
   */
  private readonly pending = new Map<number, { data: Uint8Array; filled: number }>();
  private readonly partialLock = new Mutex();
  private closed = false;

  constructor(p: SparseParts) {
    super(p);
    this.tablesAtEnd = p.tablesAtEnd;
    if (p.tablesAtEnd) {
      // Tables (each after its marker sector) and the footer follow the last grain.
      let first = p.header.gdOffset!;
      for (const s of p.gd) if (s !== 0 && s < first) first = s;
      this.tailSector = first - 1;
      this.nextSector = this.tailSector;
    }
  }

  protected override keepsTables(): boolean {
    return this.tablesAtEnd && this.writable;
  }

  protected override holdsPart(g: number): boolean {
    return this.pending.has(g);
  }

  protected override async storeEntries(t: number, gt: Uint32Array, from: number, n: number, fresh: boolean): Promise<void> {
    if (this.tablesAtEnd) this.tailDirty = true;
    else await super.storeEntries(t, gt, from, n, fresh);
  }

  override async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable();
    await this.writeStream(buf, offset);
  }

  override async close(): Promise<void> {
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
    const gb = this.grainBytes;
    const first = offset / gb;
    const count = Math.ceil(buf.length / gb);
    for (let i = 0; i < count; i++) {
      await this.checkUnwritten(first + i);
      this.pending.delete(first + i); // a whole grain replaces what part of it was waiting
    }
    const grains = await mapLimited(count, COMPRESS_CONCURRENCY, (i) => compressGrain(buf.subarray(i * gb, (i + 1) * gb)));
    return () =>
      this.lock.run(async () => {
        for (let i = 0; i < count; i++) await this.checkUnwritten(first + i);
        await this.cutTail();
        const out = new Uint8Array(grains.reduce((n, z) => n + storedGrainBytes(z), 0));
        const entries: number[] = [];
        let pos = 0;
        grains.forEach((z, i) => {
          entries.push(this.nextSector + pos / L.SECTOR);
          putGrain(out, pos, ((first + i) * gb) / L.SECTOR, z);
          pos += storedGrainBytes(z);
        });
        const total = out.length;
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
