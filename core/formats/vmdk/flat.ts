/** Flat extents (FLAT, VMFS): guest bytes stored as they are, from an offset in a file; and ZERO extents. */
import type { LayerExtent } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import type { VmdkExtent, WritableExtent } from './extent.js';

export class FlatExtent implements WritableExtent {
  constructor(
    readonly file: Protocol,
    readonly length: number,
    /** Where the extent's first byte is in `file`. */
    private readonly start: number,
    private readonly writable: boolean,
  ) {}

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    // Holes in the file read as zeros: say so, as QEMU does by asking the file (its maps call them zero data).
    const st = await this.file.blockStatus(this.start + offset, length);
    const len = Math.max(1, Math.min(st.length, length));
    return { offset, length: len, state: 'data', hostOffset: this.start + offset, zero: !st.data };
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.file.read(buf, this.start + offset);
  }

  private check(): void {
    if (!this.writable) throw new BlockError('InvalidArgument', 'this extent is read-only');
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.check();
    await this.file.write(buf, this.start + offset);
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.check();
    await this.file.writeZeroes(this.start + offset, length, mayUnmap);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.check();
    await this.file.discard(this.start + offset, length);
  }

  flush(): Promise<void> {
    return this.file.flush();
  }

  async close(): Promise<void> {}
}

/** A ZERO extent: no file, reads as zeros, cannot be written. */
export class ZeroExtent implements VmdkExtent {
  constructor(
    readonly file: Protocol,
    readonly length: number,
  ) {}

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    return { offset, length, state: 'zero' };
  }

  async read(buf: Uint8Array): Promise<void> {
    buf.fill(0);
  }

  async close(): Promise<void> {}
}
