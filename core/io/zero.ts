/** Telling all-zero buffers apart fast (zero detection in copies, compaction). */

let zeroBlock = new Uint8Array(0);

/** How many leading bytes are looked at one by one before the native compare. */
const PROBE = 16;

/**
 * True if bytes [start, end) of `buf` (all of it by default) are zero. Most
 * data blocks are told apart by their first bytes, so those are looked at
 * first, without allocating anything (a copy asks this of every 4 KiB block
 * of the data it moves); the rest is a native memcmp.
 */
export function isZero(buf: Uint8Array, start = 0, end = buf.length): boolean {
  const probeEnd = Math.min(end, start + PROBE);
  for (let i = start; i < probeEnd; i++) if (buf[i] !== 0) return false;
  const length = end - start;
  if (zeroBlock.length < length) zeroBlock = new Uint8Array(Math.max(length, 64 * 1024));
  return Buffer.from(buf.buffer, buf.byteOffset + start, length).equals(Buffer.from(zeroBlock.buffer, 0, length));
}
