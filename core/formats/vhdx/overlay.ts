/**
 * A read-only view of a file with a dirty log replayed in memory: reads see
 * the log's writes (4 KiB data sectors and zeroed ranges) over the file,
 * which is never changed. QEMU refuses such an image read-only; Platter can
 * show it as it will be once the log is replayed.
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol, ProtocolExtent } from '../../io/protocol.js';
import { LOG_SECTOR_SIZE as S } from './limits.js';

export class LogOverlay implements Protocol {
  readonly readOnly = true;
  /** Replayed 4 KiB sectors by index; newer than any zeroed range they fall in. */
  private readonly sectors = new Map<number, Uint8Array>();
  private readonly zeroed: { start: number; end: number }[] = [];
  private length = 0;

  private constructor(private readonly base: Protocol) {}

  static async over(base: Protocol): Promise<LogOverlay> {
    const o = new LogOverlay(base);
    o.length = await base.size();
    return o;
  }

  get name(): string {
    return this.base.name;
  }

  async size(): Promise<number> {
    return this.length;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    await this.base.read(buf, offset);
    const end = offset + buf.length;
    for (const z of this.zeroed) {
      const a = Math.max(z.start, offset);
      const b = Math.min(z.end, end);
      if (a < b) buf.fill(0, a - offset, b - offset);
    }
    if (!this.sectors.size) return;
    for (let s = Math.floor(offset / S); s * S < end; s++) {
      const data = this.sectors.get(s);
      if (!data) continue;
      const a = Math.max(s * S, offset);
      const b = Math.min((s + 1) * S, end);
      buf.set(data.subarray(a - s * S, b - s * S), a - offset);
    }
  }

  /** Replay only: whole aligned sectors. */
  async write(buf: Uint8Array, offset: number): Promise<void> {
    for (let i = 0; i < buf.length; i += S) this.sectors.set((offset + i) / S, buf.slice(i, i + S));
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    for (const s of [...this.sectors.keys()]) if (s * S >= offset && s * S < offset + length) this.sectors.delete(s);
    this.zeroed.push({ start: offset, end: offset + length });
  }

  async truncate(size: number): Promise<void> {
    this.length = size;
  }

  async blockStatus(offset: number, length: number): Promise<ProtocolExtent> {
    return { offset, length, data: true };
  }

  async flush(): Promise<void> {}

  discard(): Promise<void> {
    throw new BlockError('Unsupported', 'a VHDX image with a dirty log is open read-only', { op: 'discard' });
  }

  allocatedSize(): Promise<number | undefined> {
    return this.base.allocatedSize();
  }

  /** The file under it is the caller's to close. */
  async close(): Promise<void> {}
}
