/** Reading and writing tables of big-endian u64 entries (L1, L2). */
import type { Protocol } from '../../io/protocol.js';

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
    const dv = new DataView(table.buffer);
    for (let i = 0; i < inFile / 8; i++) table[i] = dv.getBigUint64(i * 8);
  }
  return table;
}

/** Encodes a table, zero-padded to a multiple of `padTo` bytes (at least one). */
export function encodeTable(table: BigUint64Array, padTo: number): Uint8Array {
  const raw = new Uint8Array(Math.max(1, Math.ceil((table.length * 8) / padTo)) * padTo);
  const dv = new DataView(raw.buffer);
  table.forEach((e, i) => dv.setBigUint64(i * 8, e));
  return raw;
}
