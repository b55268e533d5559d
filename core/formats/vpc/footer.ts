/**
 * The VHD footer: 512 big-endian bytes at the end of every image, with a
 * copy at the start of dynamic and differencing ones. Platter keeps the
 * sector it read and writes it back unchanged (QEMU does the same), so
 * fields it does not use survive.
 */
import { randomUUID } from 'node:crypto';
import { BlockError } from '../../image/errors.js';
import { chsSectors, type Geometry } from './geometry.js';
import * as L from './limits.js';

/** Byte offsets of the footer's fields (VHD specification, "Hard Disk Footer Format"). */
export const F = {
  cookie: 0, //         8 bytes "conectix"
  features: 8, //       u32: bit 1 reserved, always set
  version: 12, //       u32: 0x00010000
  dataOffset: 16, //    u64: the dynamic header, or all ones (fixed)
  timestamp: 24, //     u32: seconds since 2000-01-01 UTC
  creatorApp: 28, //    4 bytes: "vpc ", "win ", "qemu", "qem2", "d2v "...
  creatorVersion: 32, // u32
  creatorOs: 36, //     4 bytes: "Wi2k", "Mac "
  originalSize: 40, //  u64: bytes at creation
  currentSize: 48, //   u64: bytes now
  cylinders: 56, //     u16
  heads: 58, //         u8
  sectorsPerTrack: 59, // u8
  diskType: 60, //      u32: 2 fixed, 3 dynamic, 4 differencing
  checksum: 64, //      u32: one's complement of the byte sum, this field counted as zeros
  uuid: 68, //          16 bytes
  savedState: 84, //    u8
} as const;

export interface Footer {
  diskType: number;
  /** Where the dynamic header is (meaningless for fixed images). */
  dataOffset: bigint;
  creatorApp: string;
  currentSize: bigint;
  geometry: Geometry;
  /** The guest size, by QEMU's rule for this creator. */
  size: number;
  /** The sector as read or made, written back as is. */
  raw: Uint8Array;
}

/** One's complement of the sum of `bytes`, skipping the 4 bytes at `skip` (the checksum field). */
export function vhdChecksum(bytes: Uint8Array, skip: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) if (i < skip || i >= skip + 4) sum += bytes[i];
  return ~sum >>> 0;
}

export function hasFooterCookie(sector: Uint8Array): boolean {
  return sector.length >= L.FOOTER_BYTES && latin1(sector, F.cookie, 8) === L.FOOTER_COOKIE;
}

const hex = (n: number) => '0x' + n.toString(16);

function latin1(b: Uint8Array, at: number, n: number): string {
  return String.fromCharCode(...b.subarray(at, at + n));
}

/**
 * Reads a footer sector whose cookie has been found. The checksum must
 * match (QEMU 7.2 refuses a mismatch too: "Incorrect header checksum").
 */
export function parseFooter(sector: Uint8Array): Footer {
  const raw = sector.slice(0, L.FOOTER_BYTES);
  const v = new DataView(raw.buffer);
  const stored = v.getUint32(F.checksum);
  const computed = vhdChecksum(raw, F.checksum);
  if (stored !== computed) {
    throw new BlockError(
      'Corrupt',
      `Incorrect header checksum (the footer says ${hex(stored)}, its bytes sum to ${hex(computed)})`,
    );
  }
  const diskType = v.getUint32(F.diskType);
  if (diskType !== L.TYPE_FIXED && diskType !== L.TYPE_DYNAMIC && diskType !== L.TYPE_DIFFERENCING) {
    const known = 'only 2 fixed, 3 dynamic and 4 differencing exist';
    throw new BlockError('Unsupported', `unsupported VHD disk type ${diskType}; ${known}`);
  }
  const geometry = {
    cylinders: v.getUint16(F.cylinders),
    heads: raw[F.heads],
    sectorsPerTrack: raw[F.sectorsPerTrack],
  };
  const creatorApp = latin1(raw, F.creatorApp, 4);
  const currentSize = v.getBigUint64(F.currentSize);
  // Same as QEMU: Virtual PC sizes a disk by its geometry, Hyper-V and the others by current_size;
  // the largest geometry means the size did not fit in one.
  const chs = chsSectors(geometry);
  const bySize = L.CURRENT_SIZE_CREATORS.includes(creatorApp) || chs === L.MAX_GEOMETRY;
  const sectors = bySize ? currentSize / BigInt(L.SECTOR_SIZE) : BigInt(chs);
  if (sectors > BigInt(L.MAX_SECTORS)) {
    throw new BlockError('Unsupported', `the image is too large (${sectors} sectors): VHDs hold at most 2040 GiB`);
  }
  const size = Number(sectors) * L.SECTOR_SIZE;
  return { diskType, dataOffset: v.getBigUint64(F.dataOffset), creatorApp, currentSize, geometry, size, raw };
}

/** A new footer as qemu-img writes it: creator "qemu" (or "qem2" when sized exactly), a random UUID. */
export function newFooter(opts: {
  diskType: number;
  size: number;
  geometry: Geometry;
  forceSize: boolean;
}): Uint8Array {
  const raw = new Uint8Array(L.FOOTER_BYTES);
  const v = new DataView(raw.buffer);
  const ascii = (at: number, s: string) => raw.set(Buffer.from(s, 'latin1'), at);
  ascii(F.cookie, L.FOOTER_COOKIE);
  v.setUint32(F.features, L.FEATURES_RESERVED);
  v.setUint32(F.version, L.FORMAT_VERSION);
  v.setBigUint64(F.dataOffset, opts.diskType === L.TYPE_FIXED ? L.NO_OFFSET : BigInt(L.FOOTER_BYTES));
  v.setUint32(F.timestamp, (Math.floor(Date.now() / 1000) - L.TIMESTAMP_BASE) >>> 0);
  ascii(F.creatorApp, opts.forceSize ? L.CREATOR_EXACT : L.CREATOR_CHS);
  v.setUint32(F.creatorVersion, L.CREATOR_VERSION);
  ascii(F.creatorOs, L.CREATOR_OS);
  v.setBigUint64(F.originalSize, BigInt(opts.size));
  v.setBigUint64(F.currentSize, BigInt(opts.size));
  v.setUint16(F.cylinders, opts.geometry.cylinders);
  raw[F.heads] = opts.geometry.heads;
  raw[F.sectorsPerTrack] = opts.geometry.sectorsPerTrack;
  v.setUint32(F.diskType, opts.diskType);
  raw.set(Buffer.from(randomUUID().replace(/-/g, ''), 'hex'), F.uuid);
  v.setUint32(F.checksum, vhdChecksum(raw, F.checksum));
  return raw;
}
