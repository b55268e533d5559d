/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), the checksum VHDX
 * puts on its headers, region tables and log entries. Node has none built in
 * and the npm ones are native or unmaintained, so this is a small
 * slice-by-8 table implementation: eight bytes per step, ~1 GB/s in V8.
 */

const POLY = 0x82f63b78;

/** TABLES[k][b]: the CRC of byte b followed by k zero bytes. */
const TABLES: Uint32Array[] = (() => {
  const t = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let i = 0; i < 8; i++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[0][b] = c >>> 0;
  }
  for (let b = 0; b < 256; b++) {
    for (let k = 1; k < 8; k++) t[k][b] = (t[k - 1][b] >>> 8) ^ t[0][t[k - 1][b] & 0xff];
  }
  return t;
})();

/**
 * Continues a CRC-32C over `data`. `crc` is a finished CRC (0 to start);
 * crc32c(b, crc32c(a)) equals the CRC of a followed by b.
 */
export function crc32c(data: Uint8Array, crc = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES;
  let c = ~crc >>> 0;
  let i = 0;
  const end8 = data.length - (data.length % 8);
  for (; i < end8; i += 8) {
    const lo = (c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24))) >>> 0;
    c =
      t7[lo & 0xff] ^
      t6[(lo >>> 8) & 0xff] ^
      t5[(lo >>> 16) & 0xff] ^
      t4[lo >>> 24] ^
      t3[data[i + 4]] ^
      t2[data[i + 5]] ^
      t1[data[i + 6]] ^
      t0[data[i + 7]];
  }
  for (; i < data.length; i++) c = t0[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/**
 * The CRC-32C of `buf` with the 4-byte checksum field at `at` taken as
 * zeros, as VHDX computes it (the buffer is not changed).
 */
export function vhdxChecksum(buf: Uint8Array, at: number): number {
  let crc = crc32c(buf.subarray(0, at));
  crc = crc32c(new Uint8Array(4), crc);
  return crc32c(buf.subarray(at + 4), crc);
}

/** Writes the checksum of `buf` into its field at `at` (little-endian). */
export function setVhdxChecksum(buf: Uint8Array, at: number): void {
  new DataView(buf.buffer, buf.byteOffset, buf.byteLength).setUint32(at, vhdxChecksum(buf, at), true);
}

/** Whether the checksum stored at `at` matches the buffer's. */
export function hasValidChecksum(buf: Uint8Array, at: number): boolean {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(at, true) === vhdxChecksum(buf, at);
}
