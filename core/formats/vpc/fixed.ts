/**
 * An open fixed VHD: the guest's bytes as they are, then the footer. Reads
 * and writes go straight to the file; holes in it read as zeros (QEMU maps
 * them as zeros too, asking the file).
 */
import type { FormatImage, FormatInfo, LayerExtent } from '../../image/driver.js';
import type { Protocol } from '../../io/protocol.js';
import type { Footer } from './footer.js';

export class FixedVpcImage implements FormatImage {
  readonly size: number;
  /** Guest byte N is byte N of the file, and the footer lies past the guest's bytes. */
  readonly plainFile = true;

  constructor(
    readonly proto: Protocol,
    readonly footer: Footer,
    readonly readOnly: boolean,
  ) {
    this.size = footer.size;
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.proto.read(buf, offset);
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.proto.write(buf, offset);
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    return this.proto.writeZeroes(offset, length, mayUnmap);
  }

  /** QEMU's vpc has no discard; here the range reads back as zeros, and the file may free it. */
  discard(offset: number, length: number): Promise<void> {
    return this.proto.writeZeroes(offset, length, true);
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    return { offset, length, state: 'data', hostOffset: offset };
  }

  flush(): Promise<void> {
    return this.proto.flush();
  }

  async close(): Promise<void> {}

  /** qemu-img shows no cluster size for fixed images, and nothing format-specific. */
  async info(): Promise<FormatInfo> {
    return {};
  }
}
