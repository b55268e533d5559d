/**
 * Splitting a buffer of data into runs of zero and non-zero blocks, so that
 * zeros in the source become holes in the target (qemu-img convert -S).
 */
import { isZero } from '../io/zero.js';

export interface Run {
  start: number;
  length: number;
  zero: boolean;
}

/**
 * Cuts `buf` (which holds guest bytes starting at `baseOffset`) into runs of
 * blocks of `blockSize` aligned to guest offsets, each run all-zero or not.
 * Only whole blocks count as zero, so small zero gaps inside data stay data.
 */
export function zeroRuns(buf: Uint8Array, baseOffset: number, blockSize: number): Run[] {
  const runs: Run[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const alignedEnd = (Math.floor((baseOffset + pos) / blockSize) + 1) * blockSize - baseOffset;
    const end = Math.min(alignedEnd, buf.length);
    const zero = isZero(buf, pos, end);
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.length += end - pos;
    else runs.push({ start: pos, length: end - pos, zero });
    pos = end;
  }
  return runs;
}
