/**
 * Buffers for bulk I/O (the copy pipeline, read-ahead): page-aligned where
 * the platform allows, and kept for reuse after a job, since aligned memory
 * is not garbage collected. The pool is bounded by how many buffers jobs
 * hold at once (at most MAX_PARALLEL per job).
 */
import { alignedBuffer } from './native.js';

const pool = new Map<number, Uint8Array[]>();

/** A buffer of `size` bytes (contents undefined). */
export function takeBuffer(size: number): Uint8Array {
  return pool.get(size)?.pop() ?? alignedBuffer(size) ?? new Uint8Array(size);
}

/** Returns a buffer for reuse; the caller must not touch it afterwards. */
export function giveBuffer(buf: Uint8Array): void {
  let list = pool.get(buf.length);
  if (!list) pool.set(buf.length, (list = []));
  list.push(buf);
}
