/** Telling all-zero buffers apart fast (zero detection in copies, compaction). */

let zeroBlock = new Uint8Array(0);

/**
 * True if every byte is zero. Most data blocks are told apart by their first
 * bytes, so those are looked at first; the rest is a native memcmp.
 */
export function isZero(buf: Uint8Array): boolean {
  const probe = Math.min(buf.length, 16);
  for (let i = 0; i < probe; i++) if (buf[i] !== 0) return false;
  if (zeroBlock.length < buf.length) zeroBlock = new Uint8Array(Math.max(buf.length, 64 * 1024));
  return Buffer.from(buf.buffer, buf.byteOffset, buf.length).equals(
    Buffer.from(zeroBlock.buffer, 0, buf.length),
  );
}
