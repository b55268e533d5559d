/**
 * The hosted sparse extent header ("KDMV", VMDK4; little-endian, one
 * sector), and the checks that come before any of its values is used.
 */
import { BlockError } from '../../image/errors.js';
import * as L from './limits.js';

export interface SparseHeader {
  version: number;
  flags: number;
  /** Guest sectors this extent covers. */
  capacity: number;
  grainSectors: number;
  descriptorOffset: number;
  descriptorSectors: number;
  gtesPerGt: number;
  /** Sector of the redundant grain directory (with FLAG_RGD). */
  rgdOffset: number;
  /** Sector of the grain directory; undefined for GD_AT_END (the footer has it). */
  gdOffset: number | undefined;
  /** Sectors before the first grain (header, descriptor and tables). */
  overhead: number;
  uncleanShutdown: number;
  compressAlgorithm: number;
  /** The newline-detection bytes are as written (a text-mode copy changes them). */
  newlinesIntact: boolean;
}

/** Bytes of the header's fields (the rest of the sector is padding). */
const FIELDS_BYTES = 79;

function u64(dv: DataView, at: number): bigint {
  return dv.getBigUint64(at, true);
}

/** A u64 sector number as a safe number, or undefined past JavaScript's exact range. */
function sectors(v: bigint): number | undefined {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
}

/** Parses a header sector; `what` names it in messages ("header", "footer"). */
export function parseSparseHeader(buf: Uint8Array, what = 'header'): SparseHeader {
  const corrupt = (m: string) => new BlockError('Corrupt', m);
  if (buf.length < FIELDS_BYTES || String.fromCharCode(...buf.subarray(0, 4)) !== L.SPARSE_MAGIC) {
    throw new BlockError('InvalidFormat', `the sparse extent's ${what} has no KDMV magic`);
  }
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const field = (name: string, at: number) => {
    const v = sectors(u64(dv, at));
    if (v === undefined) throw corrupt(`the ${what}'s ${name} (${u64(dv, at)}) is too large`);
    return v;
  };
  const gd = u64(dv, 56);
  return {
    version: dv.getUint32(4, true),
    flags: dv.getUint32(8, true),
    capacity: field('capacity', 12),
    grainSectors: field('grain size', 20),
    descriptorOffset: field('descriptor offset', 28),
    descriptorSectors: field('descriptor size', 36),
    gtesPerGt: dv.getUint32(44, true),
    rgdOffset: field('redundant grain directory offset', 48),
    gdOffset: gd === L.GD_AT_END ? undefined : field('grain directory offset', 56),
    overhead: field('overhead', 64),
    uncleanShutdown: buf[72],
    compressAlgorithm: dv.getUint16(77, true),
    newlinesIntact: L.NL_CHECK_BYTES.every((b, i) => buf[73 + i] === b),
  };
}

/** The header as one sector. */
export function serializeSparseHeader(h: SparseHeader): Uint8Array {
  const buf = new Uint8Array(L.SECTOR);
  const dv = new DataView(buf.buffer);
  buf.set([0x4b, 0x44, 0x4d, 0x56], 0); // "KDMV"
  dv.setUint32(4, h.version, true);
  dv.setUint32(8, h.flags, true);
  dv.setBigUint64(12, BigInt(h.capacity), true);
  dv.setBigUint64(20, BigInt(h.grainSectors), true);
  dv.setBigUint64(28, BigInt(h.descriptorOffset), true);
  dv.setBigUint64(36, BigInt(h.descriptorSectors), true);
  dv.setUint32(44, h.gtesPerGt, true);
  dv.setBigUint64(48, BigInt(h.rgdOffset), true);
  dv.setBigUint64(56, h.gdOffset === undefined ? L.GD_AT_END : BigInt(h.gdOffset), true);
  dv.setBigUint64(64, BigInt(h.overhead), true);
  buf[72] = h.uncleanShutdown;
  buf.set(L.NL_CHECK_BYTES, 73);
  dv.setUint16(77, h.compressAlgorithm, true);
  return buf;
}

/** Grain directory entries an extent of `capacity` sectors needs. */
export function gdEntriesFor(capacity: number, grainSectors: number, gtesPerGt: number): number {
  return Math.ceil(capacity / (grainSectors * gtesPerGt));
}

/**
 * Refuses headers QEMU refuses (with its words where it has them), and
 * anything that would make Platter allocate or read past reason. `fileSize`
 * is the extent file's length in bytes.
 */
export function validateSparseHeader(h: SparseHeader, fileSize: number, writable: boolean): void {
  const corrupt = (m: string) => new BlockError('Corrupt', m);
  if (h.version < 1 || h.version > L.MAX_VERSION) throw new BlockError('Unsupported', `Unsupported VMDK version ${h.version}`);
  const compressed = h.compressAlgorithm === L.COMPRESSION_DEFLATE;
  if (h.compressAlgorithm !== L.COMPRESSION_NONE && !compressed) {
    throw new BlockError('Unsupported', `unsupported compression algorithm ${h.compressAlgorithm}`);
  }
  if (h.version === 3 && writable && !compressed) {
    // Version 3 adds changed block tracking, which Platter would not keep up to date.
    throw new BlockError('Unsupported', 'VMDK version 3 must be read only');
  }
  if (h.flags & L.FLAG_NL_DETECT && !h.newlinesIntact) {
    throw new BlockError('Corrupt', 'the newline-detection bytes are damaged (was the file copied in text mode?)');
  }
  const unknown = h.flags & ~L.FLAGS_KNOWN;
  if (unknown) throw new BlockError('Unsupported', `unknown header flags 0x${unknown.toString(16)}`);
  if (compressed && !(h.flags & L.FLAG_MARKERS)) {
    throw new BlockError('Unsupported', 'compressed grains without grain markers are not supported');
  }
  if (h.grainSectors === 0 || h.grainSectors > L.MAX_GRAIN_SECTORS || (h.grainSectors & (h.grainSectors - 1)) !== 0) {
    throw corrupt(`Invalid granularity, image may be corrupt (grain of ${h.grainSectors} sectors)`);
  }
  if (h.gtesPerGt > L.MAX_GTES_PER_GT) throw corrupt(`L2 table size too big (${h.gtesPerGt} grain table entries)`);
  if (h.gtesPerGt === 0) throw corrupt('L1 entry size is invalid (0 grain table entries)');
  if (h.capacity > L.MAX_CAPACITY_SECTORS) throw corrupt(`the capacity of ${h.capacity} sectors is too large`);
  const gdEntries = gdEntriesFor(h.capacity, h.grainSectors, h.gtesPerGt);
  if (gdEntries > L.MAX_GD_ENTRIES) throw corrupt(`L1 size too big (${gdEntries} grain directory entries)`);
  if (h.overhead * L.SECTOR > fileSize) {
    throw corrupt(`File truncated, expecting at least ${h.overhead * L.SECTOR} bytes`);
  }
  if (h.descriptorSectors * L.SECTOR > L.MAX_DESCRIPTOR_BYTES + 1) {
    throw corrupt(`the embedded descriptor (${h.descriptorSectors} sectors) is larger than ${L.MAX_DESCRIPTOR_BYTES + 1} bytes`);
  }
  if ((h.descriptorOffset + h.descriptorSectors) * L.SECTOR > fileSize) {
    throw corrupt('the embedded descriptor lies past the end of the file');
  }
  const gdBytes = gdEntries * 4;
  if (h.gdOffset !== undefined && h.gdOffset * L.SECTOR + gdBytes > fileSize) {
    throw corrupt('the grain directory lies past the end of the file (truncated?)');
  }
  if (h.flags & L.FLAG_RGD && h.rgdOffset * L.SECTOR + gdBytes > fileSize) {
    throw corrupt('the redundant grain directory lies past the end of the file (truncated?)');
  }
}
