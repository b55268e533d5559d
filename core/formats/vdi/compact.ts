/**
 * Planning the moves that pack a VDI file: data blocks are numbered from the
 * data offset, and QEMU puts a new block at number `blocks allocated`, so the
 * blocks in use must end up numbered 0..n-1. The plan moves the highest block
 * in use into the lowest free number until none is left above a free one.
 */
import { isAllocated } from './limits.js';

/** One data block to copy, and the guest block to point at the copy. */
export interface BlockMove {
  from: number;
  to: number;
  guest: number;
}

/** For each data block number below `count`: the guest block using it, or -1. */
export function owners(entries: Uint32Array, count: number): Int32Array {
  const owner = new Int32Array(count).fill(-1);
  entries.forEach((e, g) => {
    if (isAllocated(e) && e < count) owner[e] = g;
  });
  return owner;
}

/** The moves that make the blocks in use (per `owner`) dense, and how many are in use. */
export function packPlan(owner: Int32Array): { moves: BlockMove[]; used: number } {
  const moves: BlockMove[] = [];
  const slots = Int32Array.from(owner);
  for (let lo = 0, hi = slots.length - 1; ; ) {
    while (lo < hi && slots[lo] >= 0) lo++;
    while (hi > lo && slots[hi] < 0) hi--;
    if (lo >= hi) break;
    moves.push({ from: hi, to: lo, guest: slots[hi] });
    slots[lo] = slots[hi];
    slots[hi] = -1;
  }
  return { moves, used: slots.reduce((n, g) => (g >= 0 ? n + 1 : n), 0) };
}
