/**
 * The dynamic disk header ("cxsparse", 1024 big-endian bytes) of dynamic and
 * differencing VHDs: where the BAT is, how many entries it has, the block
 * size, and for differencing disks the parent's name and locators. Validated
 * with QEMU's words where QEMU refuses the same thing, before anything is
 * allocated from it.
 */
import { BlockError } from '../../image/errors.js';
import { vhdChecksum } from './footer.js';
import * as L from './limits.js';

/** Byte offsets (VHD specification, "Dynamic Disk Header Format"). */
export const D = {
  cookie: 0, //          8 bytes "cxsparse"
  dataOffset: 8, //      u64: unused, all ones
  tableOffset: 16, //    u64: the BAT
  version: 24, //        u32: 0x00010000
  maxTableEntries: 28, // u32
  blockSize: 32, //      u32: 2 MiB by default
  checksum: 36, //       u32: as the footer's
  parentUuid: 40, //     16 bytes
  parentTimestamp: 56, // u32
  parentName: 64, //     512 bytes: UTF-16 big-endian
  locators: 576, //      8 entries of 24 bytes
} as const;

/** A parent locator entry's fields, relative to the entry. */
const LOC = { platform: 0, dataSpace: 4, dataLength: 8, dataOffset: 16, bytes: 24 } as const;

export interface ParentLocator {
  platform: string;
  offset: number;
  length: number;
}

export interface DynamicHeader {
  tableOffset: number;
  maxTableEntries: number;
  blockSize: number;
  /** The parent's file name, as the header names it (differencing disks). */
  parentName: string;
  locators: ParentLocator[];
}

const hex = (n: number | bigint) => '0x' + n.toString(16);

/**
 * Reads and validates the header of an image of `size` guest bytes in a file
 * of `fileSize` bytes. The checksum is not checked (QEMU ignores it). Parent
 * locators are read for differencing images only (others should have none;
 * QEMU never looks at them).
 */
export function parseDynamicHeader(
  bytes: Uint8Array,
  size: number,
  fileSize: number,
  differencing: boolean,
): DynamicHeader {
  const v = new DataView(bytes.buffer, bytes.byteOffset, L.DYN_HEADER_BYTES);
  const fail = (kind: 'InvalidFormat' | 'Corrupt' | 'Unsupported', message: string): never => {
    throw new BlockError(kind, message);
  };
  if (String.fromCharCode(...bytes.subarray(0, 8)) !== L.DYN_HEADER_COOKIE) {
    fail('InvalidFormat', 'Invalid header magic (no "cxsparse" dynamic disk header)');
  }
  const blockSize = v.getUint32(D.blockSize);
  if (blockSize < L.MIN_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
    fail('Corrupt', `Invalid block size ${blockSize} (must be a power of two of at least ${L.MIN_BLOCK_SIZE})`);
  }
  const maxTableEntries = v.getUint32(D.maxTableEntries);
  if (maxTableEntries * blockSize < size) {
    fail('Corrupt', `Page table too small (${maxTableEntries} blocks of ${blockSize} bytes for a ${size}-byte disk)`);
  }
  if (maxTableEntries > L.MAX_TABLE_ENTRIES) fail('Unsupported', `Max Table Entries too large (${maxTableEntries})`);
  const table = v.getBigUint64(D.tableOffset);
  const tableEnd = table + BigInt(maxTableEntries * 4);
  if (table % BigInt(L.SECTOR_SIZE) !== 0n) fail('Corrupt', `the BAT offset ${hex(table)} is not sector aligned`);
  if (table < BigInt(L.FOOTER_BYTES)) fail('Corrupt', `the BAT offset ${hex(table)} overlaps the footer copy`);
  if (tableEnd > BigInt(fileSize)) {
    fail('Corrupt', `the BAT (${hex(table)} to ${hex(tableEnd)}) is beyond the end of the file (${fileSize} bytes)`);
  }
  const locators: ParentLocator[] = [];
  for (let i = 0; differencing && i < L.PARENT_LOCATORS; i++) {
    const at = D.locators + i * LOC.bytes;
    const code = v.getUint32(at + LOC.platform);
    if (code === 0) continue;
    const platform = String.fromCharCode(...bytes.subarray(at, at + 4));
    const length = v.getUint32(at + LOC.dataLength);
    const offset = v.getBigUint64(at + LOC.dataOffset);
    if (length > L.MAX_LOCATOR_BYTES || offset + BigInt(length) > BigInt(fileSize)) {
      const what = `parent locator ${i} (${platform}: ${length} bytes at ${hex(offset)})`;
      fail('Corrupt', `${what} is beyond the end of the file (${fileSize} bytes)`);
    }
    locators.push({ platform, offset: Number(offset), length });
  }
  const parentName = utf16(bytes.subarray(D.parentName, D.parentName + L.PARENT_NAME_BYTES), false);
  return { tableOffset: Number(table), maxTableEntries, blockSize, parentName, locators };
}

/** UTF-16 text up to its first NUL. */
export function utf16(bytes: Uint8Array, littleEndian: boolean): string {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const units: number[] = [];
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    const u = v.getUint16(i, littleEndian);
    if (u === 0) break;
    units.push(u);
  }
  return String.fromCharCode(...units);
}

/** A new header as qemu-img writes it: BAT after it, 2 MiB blocks. */
export function newDynamicHeader(tableOffset: number, maxTableEntries: number, blockSize: number): Uint8Array {
  const raw = new Uint8Array(L.DYN_HEADER_BYTES);
  const v = new DataView(raw.buffer);
  raw.set(Buffer.from(L.DYN_HEADER_COOKIE, 'latin1'), D.cookie);
  v.setBigUint64(D.dataOffset, L.NO_OFFSET);
  v.setBigUint64(D.tableOffset, BigInt(tableOffset));
  v.setUint32(D.version, L.FORMAT_VERSION);
  v.setUint32(D.maxTableEntries, maxTableEntries);
  v.setUint32(D.blockSize, blockSize);
  v.setUint32(D.checksum, vhdChecksum(raw, D.checksum));
  return raw;
}
