/** Reading and writing tables of big-endian u64 entries (L1, L2, the refcount table). */
import type { Protocol } from '../../io/protocol.js';

/** Where an entry's high and low 32 bits sit in halvesOf(table): words[2i + HI] and words[2i + LO]. */
export const HI = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0;
export const LO = 1 - HI;

/**
 * Swaps the bytes of each 8-byte word of `bytes` (a whole number of words)
 * where the host is little-endian: big-endian file entries to native ones
 * and back, natively, instead of one BigInt per entry.
 */
function swapEntries(bytes: Uint8Array): void {
  if (HI === 1) Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).swap64();
}

/**
 * Reads `entries` entries at `offset` into one buffer, converted in place.
 * What lies past the end of the file is never read: it stays the zeros it
 * would read as, so a hostile size cannot make Platter read far beyond it.
 */
export async function readTable(proto: Protocol, offset: number, entries: number): Promise<BigUint64Array> {
  const table = new BigUint64Array(entries);
  const inFile = Math.max(0, Math.min(entries * 8, (await proto.size()) - offset));
  if (inFile > 0) {
    await proto.read(new Uint8Array(table.buffer, 0, inFile), offset);
    swapEntries(new Uint8Array(table.buffer));
  }
  return table;
}

/** Encodes a table, zero-padded to a multiple of `padTo` bytes (at least one). */
export function encodeTable(table: BigUint64Array, padTo: number): Uint8Array {
  const raw = new Uint8Array(Math.max(1, Math.ceil((table.length * 8) / padTo)) * padTo);
  raw.set(new Uint8Array(table.buffer, table.byteOffset, table.byteLength));
  swapEntries(raw.subarray(0, table.byteLength));
  return raw;
}

const halves = new WeakMap<BigUint64Array, Uint32Array>();

/**
 * A table's entries as 32-bit halves, over the same memory (so always
 * current): hot paths decode them with number arithmetic, since every read
 * of a BigUint64Array element and every BigInt operation allocates.
 */
export function halvesOf(table: BigUint64Array): Uint32Array {
  let words = halves.get(table);
  if (!words) halves.set(table, (words = new Uint32Array(table.buffer, table.byteOffset, table.length * 2)));
  return words;
}
