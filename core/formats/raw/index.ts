/**
 * raw: the guest's bytes, one to one, in the file. Holes in the file are
 * zero ranges; the virtual size is the file's length rounded up to a sector.
 */
import type { FormatDriver, FormatImage, FormatInfo, LayerExtent, Resizable, ResizePreallocation } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { PREALLOCATION_MODES, type Preallocation, type Protocol } from '../../io/protocol.js';
import { SIZE_OPTION } from '../../options/common.js';

/** Guest sizes are whole 512-byte sectors, as in QEMU. */
const SECTOR = 512;
const roundUp = (n: number) => Math.ceil(n / SECTOR) * SECTOR;

class RawImage implements FormatImage, Resizable {
  readonly plainFile = true;

  constructor(
    private readonly proto: Protocol,
    public size: number,
    readonly readOnly: boolean,
  ) {}

  read(buf: Uint8Array, offset: number) {
    return this.proto.read(buf, offset);
  }
  write(buf: Uint8Array, offset: number) {
    return this.proto.write(buf, offset);
  }
  writeZeroes(offset: number, length: number, mayUnmap: boolean) {
    return this.proto.writeZeroes(offset, length, mayUnmap);
  }
  discard(offset: number, length: number) {
    return this.proto.discard(offset, length);
  }
  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    const ext = await this.proto.blockStatus(offset, length);
    return { offset, length: ext.length, state: ext.data ? 'data' : 'zero', hostOffset: offset };
  }
  flush() {
    return this.proto.flush();
  }
  async close() {}
  async info(): Promise<FormatInfo> {
    return {};
  }
  async resize(size: number, opts: { prealloc: ResizePreallocation }) {
    // A raw file has no metadata to preallocate (qemu-img says the same).
    if (opts.prealloc === 'metadata') throw new BlockError('Unsupported', 'Unsupported preallocation mode: metadata');
    await this.proto.truncate(size, opts.prealloc);
    this.size = size;
  }
}

export const raw: FormatDriver = {
  name: 'raw',
  description: 'Raw disk image: the bytes of the disk, nothing else',
  // Anything is a valid raw image, so raw only wins when nothing else claims the file.
  probe: () => 1,
  async open(proto, opts) {
    return new RawImage(proto, roundUp(await proto.size()), opts.readOnly);
  },
  createOptions: [
    SIZE_OPTION,
    {
      name: 'preallocation',
      type: 'enum',
      values: PREALLOCATION_MODES,
      default: 'off',
      help: 'Preallocation mode',
    },
  ],
  async create(proto, req) {
    await proto.truncate(req.size, req.options.preallocation as Preallocation);
  },
  measure(size) {
    const required = roundUp(size);
    return { required, fullyAllocated: required };
  },
};
