/**
 * For crash tests: a protocol that records the writes and truncates it
 * passes on, and the file as it would be after a crash after any of them
 * (earlier ones done, later ones lost).
 */
import type { Protocol } from '../io/protocol.js';

export type Recorded = { kind: 'write'; offset: number; data: Uint8Array } | { kind: 'truncate'; size: number };

/** A protocol that records every write and truncate it passes on. */
export function recording(proto: Protocol, log: Recorded[]): Protocol {
  return new Proxy(proto, {
    get(target, prop, receiver) {
      if (prop === 'write') {
        return async (buf: Uint8Array, offset: number) => {
          log.push({ kind: 'write', offset, data: buf.slice() });
          await target.write(buf, offset);
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
