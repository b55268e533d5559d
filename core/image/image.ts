/**
 * An open image: a format layer over a protocol, with its backing chain.
 * Ops talk to this, never to drivers or protocols directly.
 */
import type { Protocol } from '../io/protocol.js';
import {
  hasCompressedWrites,
  placesClusters,
  type ClusterPlacement,
  type FormatDriver,
  type FormatImage,
  type FormatInfo,
} from './driver.js';
import { BlockError, toBlockError } from './errors.js';
import type { OpenOptions } from './open.js';

/** The state of a run of guest bytes across the whole chain (qemu's block status). */
export interface BlockStatus {
  offset: number;
  length: number;
  /** Stored somewhere in the chain (qemu's "present"). */
  present: boolean;
  /** Reads return stored bytes, not known zeros. */
  data: boolean;
  /** Known to read as zeros. */
  zero: boolean;
  /** The layer that answered: 0 is this image, 1 its backing file, ... */
  depth: number;
  /** Where the bytes are in that layer's file, when that means something. */
  hostOffset?: number;
  compressed: boolean;
  /** The file of the layer that answered. */
  filename: string;
}

/** How openImage opened an image: enough for another thread to open it too. */
export interface OpenedAs {
  filename: string;
  options: OpenOptions;
}

export class Image {
  /**
   * How openImage opened it (the format filled in), so that another thread
   * can open the same image: a copy worker (see ops/copy-workers.ts).
   */
  openedAs?: OpenedAs;

  constructor(
    readonly filename: string,
    readonly driver: FormatDriver,
    readonly layer: FormatImage,
    readonly protocol: Protocol,
    readonly backing?: Image,
  ) {}

  get format(): string {
    return this.driver.name;
  }

  get size(): number {
    return this.layer.size;
  }

  get readOnly(): boolean {
    return this.layer.readOnly;
  }

  private checkRange(op: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new BlockError('OutOfBounds', `${op} of ${length} bytes at offset ${offset} is outside the image (size ${this.size})`, {
        path: this.filename,
        op,
        offset,
      });
    }
  }

  private checkWritable(op: string): void {
    if (this.readOnly) throw new BlockError('InvalidArgument', 'image is open read-only', { path: this.filename, op });
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.checkRange('read', offset, buf.length);
    await this.wrap('read', offset, () => this.layer.read(buf, offset));
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable('write');
    this.checkRange('write', offset, buf.length);
    await this.wrap('write', offset, () => this.layer.write(buf, offset));
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.checkWritable('write-zeroes');
    this.checkRange('write-zeroes', offset, length);
    await this.wrap('write-zeroes', offset, () => this.layer.writeZeroes(offset, length, mayUnmap));
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable('discard');
    this.checkRange('discard', offset, length);
    await this.wrap('discard', offset, () => this.layer.discard(offset, length));
  }

  /**
   * Has the storage allocate the range now, for a write that will fill it
   * (Protocol.allocate). A hint, taken only by a plain file, whose guest
   * bytes are its file's bytes.
   */
  async allocate(offset: number, length: number): Promise<void> {
    this.checkWritable('allocate');
    this.checkRange('allocate', offset, length);
    const { protocol } = this;
    if (this.plainFile && protocol.allocate) await this.wrap('allocate', offset, () => protocol.allocate!(offset, length));
  }

  /** Whether other threads may write distinct ranges of the same file at once (see FormatImage.plainFile). */
  get plainFile(): boolean {
    return this.layer.plainFile === true;
  }

  /** Whether every write is stored compressed (see FormatImage.compressesWrites). */
  get compressesWrites(): boolean {
    return this.layer.compressesWrites === true;
  }

  /** Cluster size for compressed writes, if this image can store them. */
  get compressionCluster(): number | undefined {
    return hasCompressedWrites(this.layer) ? this.layer.compressionCluster : undefined;
  }

  /** See CompressedWrites.compressClusters. */
  async compressClusters(buf: Uint8Array, offset: number): Promise<() => Promise<void>> {
    this.checkWritable('write-compressed');
    this.checkRange('write-compressed', offset, buf.length);
    const layer = this.layer;
    if (!hasCompressedWrites(layer)) {
      throw new BlockError('Unsupported', `${this.format} images cannot store compressed data`, { path: this.filename });
    }
    const write = await this.wrap('write-compressed', offset, () => layer.compressClusters(buf, offset));
    return () => this.wrap('write-compressed', offset, write);
  }

  /** See PlacesClusters: undefined when other threads cannot write this image's new clusters. */
  clusterPlacement(): ClusterPlacement | undefined {
    const placement = !this.readOnly && placesClusters(this.layer) ? this.layer.clusterPlacement() : undefined;
    if (!placement) return undefined;
    // The driver's facts as they are; its calls wrapped, so their errors name this image.
    return {
      ...placement,
      reserve: (count) => this.wrap('write', undefined, () => placement.reserve(count)),
      map: (guestCluster, host, count) =>
        this.wrap('write', guestCluster * placement.clusterSize, () => placement.map(guestCluster, host, count)),
      unreserve: (host, count) => this.wrap('write', undefined, () => placement.unreserve(host, count)),
    };
  }

  async flush(): Promise<void> {
    await this.wrap('flush', undefined, () => this.layer.flush());
  }

  info(): Promise<FormatInfo> {
    return this.layer.info();
  }

  /**
   * Bytes this image's own files take on their storage (its backing chain's
   * not counted; qemu-img info's actual-size), when the storage tells.
   */
  async allocatedSize(): Promise<number | undefined> {
    const own = await this.protocol.allocatedSize();
    return own === undefined ? undefined : own + ((await this.info()).otherFilesAllocated ?? 0);
  }

  /**
   * What the run of bytes at `offset` (at most `length`) is, looking down the
   * backing chain for ranges this layer leaves unallocated.
   */
  async blockStatus(offset: number, length: number, depth = 0): Promise<BlockStatus> {
    const len = Math.min(length, this.size - offset);
    if (len <= 0) {
      return { offset, length: 0, present: false, data: false, zero: true, depth, compressed: false, filename: this.filename };
    }
    const ext = await this.wrap('block-status', offset, () => this.layer.blockStatus(offset, len));
    // A driver bug or a hostile image must not make callers loop forever.
    if (!(ext.length > 0)) {
      throw new BlockError('Corrupt', `block status at offset ${offset} reported an empty extent`, {
        path: this.filename,
        op: 'block-status',
        offset,
      });
    }
    ext.length = Math.min(ext.length, len);
    if (ext.state === 'unallocated' && this.backing && offset < this.backing.size) {
      return this.backing.blockStatus(offset, ext.length, depth + 1);
    }
    // Data stored in a hole of the file (preallocated metadata, say) reads as
    // zeros: ask the file, as QEMU does, so copies need not read it. (Like
    // QEMU, not a separate data file: its holes stay data in maps.)
    let zero = ext.state !== 'data' || ext.zero === true;
    if (ext.state === 'data' && ext.hostOffset !== undefined && !ext.compressed && !ext.hostFile && ext.zero === undefined) {
      const file = await this.wrap('block-status', offset, () => this.protocol.blockStatus(ext.hostOffset!, ext.length));
      ext.length = Math.min(ext.length, file.length);
      zero = !file.data;
    }
    return {
      offset,
      length: ext.length,
      present: ext.state !== 'unallocated',
      data: ext.state === 'data',
      // Unallocated with nothing below reads as zeros.
      zero,
      depth,
      hostOffset: ext.hostOffset,
      compressed: ext.compressed ?? false,
      filename: ext.hostFile?.name ?? this.filename,
    };
  }

  /** Closes this image and its backing chain; safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.layer.close();
    } finally {
      await this.protocol.close();
      await this.backing?.close();
    }
  }
  private closed = false;

  private async wrap<T>(op: string, offset: number | undefined, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw toBlockError(err, { path: this.filename, op, offset });
    }
  }
}
