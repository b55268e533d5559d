/**
 * The VDI header: one 512-byte sector, little-endian. Parsing validates every
 * field Platter uses (with QEMU's words where QEMU refuses the same thing);
 * serializing patches the fields Platter changes into the sector it read, so
 * the banner, description, geometry and unknown bytes survive.
 */
import { randomBytes } from 'node:crypto';
import { BlockError } from '../../image/errors.js';
import * as L from './limits.js';

/** Byte offsets of the fields Platter reads or writes. */
const OFF = {
  signature: 0x40,
  version: 0x44,
  headerSize: 0x48,
  imageType: 0x4c,
  imageFlags: 0x50,
  offsetBmap: 0x154,
  offsetData: 0x158,
  sectorSize: 0x168,
  diskSize: 0x170,
  blockSize: 0x178,
  blockExtra: 0x17c,
  blocksInImage: 0x180,
  blocksAllocated: 0x184,
  uuidImage: 0x188,
  uuidModification: 0x198,
  uuidParent: 0x1a8,
  uuidParentModification: 0x1b8,
} as const;

export interface VdiHeader {
  imageType: number;
  offsetBmap: number;
  offsetData: number;
  /** The guest size in bytes, rounded up to a sector as QEMU does. */
  diskSize: number;
  blocksInImage: number;
  blocksAllocated: number;
  /** The sector as read (or made), kept so serializing changes only Platter's fields. */
  raw: Uint8Array;
}

const hex = (n: number) => '0x' + n.toString(16);

/** Bytes the block map takes on disk: whole sectors. */
export function bmapBytes(blocks: number): number {
  return Math.ceil((blocks * 4) / L.SECTOR_SIZE) * L.SECTOR_SIZE;
}

/** Reads and validates a header sector of a file `fileSize` bytes long (QEMU's words where it refuses the same). */
export function parseHeader(sector: Uint8Array, fileSize: number): VdiHeader {
  const fail = (kind: 'InvalidFormat' | 'Unsupported' | 'Corrupt', message: string) => {
    throw new BlockError(kind, message, { op: 'open' });
  };
  const unsupported = (what: string) => fail('Unsupported', `unsupported VDI image (${what})`);
  if (sector.length < L.HEADER_BYTES) fail('InvalidFormat', 'Image not in VDI format (file shorter than its header)');
  const v = new DataView(sector.buffer, sector.byteOffset, L.HEADER_BYTES);
  const u32 = (o: number) => v.getUint32(o, true);

  const signature = u32(OFF.signature);
  if (signature !== L.VDI_SIGNATURE) {
    fail('InvalidFormat', `Image not in VDI format (bad signature ${signature.toString(16).padStart(8, '0')})`);
  }
  const version = u32(OFF.version);
  if (version !== L.VDI_VERSION_1_1) unsupported(`version ${version >>> 16}.${version & 0xffff}`);
  const headerSize = u32(OFF.headerSize);
  if (headerSize !== L.HEADER_SIZE && headerSize !== L.HEADER_SIZE_PLUS) {
    unsupported(`header size ${hex(headerSize)} is not ${hex(L.HEADER_SIZE)} or ${hex(L.HEADER_SIZE_PLUS)}`);
  }
  const imageType = u32(OFF.imageType);
  if (imageType !== L.TYPE_DYNAMIC && imageType !== L.TYPE_STATIC) {
    unsupported(`image type ${imageType}; only 1 dynamic and 2 static are known`);
  }
  const rawSize = v.getBigUint64(OFF.diskSize, true);
  if (rawSize > BigInt(L.MAX_DISK_SIZE)) {
    fail('Unsupported', `Unsupported VDI image size (size is 0x${rawSize.toString(16)}, max supported is ${hex(L.MAX_DISK_SIZE)})`);
  }
  // VBoxManage convertfromraw can leave an odd size; QEMU rounds it up to a sector.
  const diskSize = Math.ceil(Number(rawSize) / L.SECTOR_SIZE) * L.SECTOR_SIZE;
  const offsetBmap = u32(OFF.offsetBmap);
  const offsetData = u32(OFF.offsetData);
  if (offsetBmap % L.SECTOR_SIZE) unsupported(`unaligned block map offset ${hex(offsetBmap)}`);
  if (offsetData % L.SECTOR_SIZE) unsupported(`unaligned data offset ${hex(offsetData)}`);
  const sectorSize = u32(OFF.sectorSize);
  if (sectorSize !== L.SECTOR_SIZE) unsupported(`sector size ${sectorSize} is not ${L.SECTOR_SIZE}`);
  const blockSize = u32(OFF.blockSize);
  if (blockSize !== L.BLOCK_SIZE) unsupported(`block size ${blockSize} is not ${L.BLOCK_SIZE}`);
  const blockExtra = u32(OFF.blockExtra);
  if (blockExtra !== 0) unsupported(`block extra data of ${blockExtra} bytes`);
  const blocksInImage = u32(OFF.blocksInImage);
  const room = blocksInImage * L.BLOCK_SIZE;
  if (diskSize > room) unsupported(`disk size ${diskSize}, image bitmap has room for ${room}`);
  if (!isNullUuid(sector, OFF.uuidParent)) unsupported('non-NULL link UUID');
  if (!isNullUuid(sector, OFF.uuidParentModification)) unsupported('non-NULL parent UUID');
  if (blocksInImage > L.MAX_BLOCKS) unsupported(`too many blocks ${blocksInImage}, max is ${L.MAX_BLOCKS}`);

  // Where the map and the data are must make sense before the map is read.
  const mapEnd = offsetBmap + bmapBytes(blocksInImage);
  const fileEnd = `the end of the file (${fileSize} bytes)`;
  if (offsetBmap < L.HEADER_BYTES) fail('Corrupt', `the block map at ${hex(offsetBmap)} overlaps the header`);
  if (mapEnd > fileSize) fail('Corrupt', `the block map (${hex(offsetBmap)} to ${hex(mapEnd)}) is beyond ${fileEnd}`);
  if (offsetData < mapEnd) fail('Corrupt', `the data offset ${hex(offsetData)} is inside the block map (which ends at ${hex(mapEnd)})`);
  if (offsetData > fileSize) fail('Corrupt', `the data offset ${hex(offsetData)} is beyond ${fileEnd}`);
  const blocksAllocated = u32(OFF.blocksAllocated);
  return { imageType, offsetBmap, offsetData, diskSize, blocksInImage, blocksAllocated, raw: sector.slice(0, L.HEADER_BYTES) };
}

function isNullUuid(sector: Uint8Array, at: number): boolean {
  return sector.subarray(at, at + 16).every((b) => b === 0);
}

/** The header sector with Platter's fields written over the one it came from. */
export function serializeHeader(h: VdiHeader): Uint8Array {
  const out = h.raw.slice();
  const v = new DataView(out.buffer);
  v.setUint32(OFF.imageType, h.imageType, true);
  v.setUint32(OFF.offsetBmap, h.offsetBmap, true);
  v.setUint32(OFF.offsetData, h.offsetData, true);
  v.setBigUint64(OFF.diskSize, BigInt(h.diskSize), true);
  v.setUint32(OFF.blocksInImage, h.blocksInImage, true);
  v.setUint32(OFF.blocksAllocated, h.blocksAllocated, true);
  return out;
}

/**
 * A random (version 4) UUID as VDI stores it: VirtualBox's layout, whose
 * first three fields are little-endian.
 */
export function randomVdiUuid(): Uint8Array {
  const u = randomBytes(16);
  u[6] = (u[6] & 0x0f) | 0x40;
  u[8] = (u[8] & 0x3f) | 0x80;
  // RFC 4122 order to VirtualBox order: swap the 32-bit and two 16-bit fields.
  return Uint8Array.from([u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6], ...u.subarray(8)]);
}

/** A new header sector for an image of `diskSize` bytes, as QEMU lays it out: header, map, data. */
export function newHeader(diskSize: number, imageType: number): VdiHeader {
  const blocks = Math.ceil(diskSize / L.BLOCK_SIZE);
  const raw = new Uint8Array(L.HEADER_BYTES);
  raw.set(new TextEncoder().encode(L.BANNER), 0);
  const v = new DataView(raw.buffer);
  v.setUint32(OFF.signature, L.VDI_SIGNATURE, true);
  v.setUint32(OFF.version, L.VDI_VERSION_1_1, true);
  v.setUint32(OFF.headerSize, L.HEADER_SIZE, true);
  v.setUint32(OFF.sectorSize, L.SECTOR_SIZE, true);
  v.setUint32(OFF.blockSize, L.BLOCK_SIZE, true);
  raw.set(randomVdiUuid(), OFF.uuidImage);
  raw.set(randomVdiUuid(), OFF.uuidModification);
  const offsetBmap = L.HEADER_BYTES;
  return {
    imageType,
    offsetBmap,
    offsetData: offsetBmap + bmapBytes(blocks),
    diskSize,
    blocksInImage: blocks,
    blocksAllocated: imageType === L.TYPE_STATIC ? blocks : 0,
    raw,
  };
}
