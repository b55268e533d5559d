/**
 * For crash tests: a protocol that records the writes, truncates and
 * discards it passes on, the file as it would be after a crash after any of
 * them (earlier ones done, later ones lost), and what each guest block may then read.
 */
import { createHash } from 'node:crypto';
import type { Protocol } from '../io/protocol.js';

const MiB = 1 << 20;

export type Recorded =
  | { kind: 'write'; offset: number; data: Uint8Array }
  | { kind: 'truncate'; size: number }
  | { kind: 'discard'; offset: number; length: number };

/**
 * A protocol that records every write, truncate and discard it passes on;
 * `flushes`, if given, gets the length of the log at each flush.
 */
export function recording(proto: Protocol, log: Recorded[], flushes?: number[]): Protocol {
  return new Proxy(proto, {
    get(target, prop, receiver) {
      if (prop === 'write') {
        return async (buf: Uint8Array, offset: number) => {
          log.push({ kind: 'write', offset, data: buf.slice() });
          await target.write(buf, offset);
        };
      }
      if (prop === 'discard') {
        return async (offset: number, length: number) => {
          log.push({ kind: 'discard', offset, length });
          await target.discard(offset, length);
        };
      }
      if (prop === 'flush' && flushes) {
        return async () => {
          await target.flush();
          flushes.push(log.length);
        };
      }
      if (prop === 'truncate') {
        return async (size: number, prealloc?: never) => {
          log.push({ kind: 'truncate', size });
          await target.truncate(size, prealloc);
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/** The file after the first `n` recorded changes. */
export function replay(base: Uint8Array, log: Recorded[], n: number): Uint8Array {
  let file = Buffer.from(base);
  for (const r of log.slice(0, n)) {
    if (r.kind === 'truncate') {
      const next = Buffer.alloc(r.size);
      file.copy(next, 0, 0, Math.min(file.length, r.size));
      file = next;
    } else if (r.kind === 'discard') {
      // A punched hole reads as zeros; the file keeps its length.
      file.fill(0, Math.min(r.offset, file.length), Math.min(r.offset + r.length, file.length));
    } else {
      if (r.offset + r.data.length > file.length) {
        const next = Buffer.alloc(r.offset + r.data.length);
        file.copy(next);
        file = next;
      }
      file.set(r.data, r.offset);
    }
  }
  return file;
}

const blockKey = (b: Uint8Array) => createHash('sha1').update(b).digest('hex').slice(0, 12);

/**
 * The guest's 1 MiB blocks and every content each has had: after a crash,
 * a block must read as one of them (nothing flushed lost, nothing from
 * another block). `fill(i)` is block i's byte at the start.
 */
export class BlockHistory {
  private readonly blocks: Uint8Array[];
  private readonly seen: Set<string>[];

  constructor(count: number, fill: (i: number) => number) {
    this.blocks = Array.from({ length: count }, (_, i) => new Uint8Array(MiB).fill(fill(i)));
    this.seen = this.blocks.map((b) => new Set([blockKey(b)]));
  }

  /** Writes `data` at `at` in block `block`, to the image and to the history. */
  async write(img: Writes, block: number, at: number, data: Uint8Array): Promise<void> {
    await img.write(data, block * MiB + at);
    this.blocks[block].set(data, at);
    this.record();
  }

  /** Writes zeros over block `block`, to the image and to the history. */
  async zero(img: Writes, block: number, mayUnmap: boolean): Promise<void> {
    await img.writeZeroes(block * MiB, MiB, mayUnmap);
    this.zeroed(block);
  }

  /** Block `block` now reads as zeros (a discard done by the caller). */
  zeroed(block: number): void {
    this.blocks[block].fill(0);
    this.record();
  }

  /** Why `bytes` cannot be block `block` after a crash, or undefined if it can. */
  refuses(block: number, bytes: Uint8Array): string | undefined {
    const key = blockKey(bytes);
    return this.seen[block].has(key) ? undefined : `block ${block} reads ${key}`;
  }

  private record(): void {
    this.blocks.forEach((b, i) => this.seen[i].add(blockKey(b)));
  }
}

interface Writes {
  write(buf: Uint8Array, offset: number): Promise<void>;
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
}
