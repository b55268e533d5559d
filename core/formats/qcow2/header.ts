/**
 * The qcow2 header and its extensions: parsed with every field validated
 * before use, and written back with unknown extensions kept intact.
 */
import { BlockError } from '../../image/errors.js';
import { encodeBitmapsExtension, parseBitmapsExtension, type BitmapsExtension } from './bitmaps.js';
import * as L from './limits.js';

export interface HeaderExtension {
  type: number;
  data: Uint8Array;
}

export interface FeatureName {
  type: number;
  bit: number;
  name: string;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFile?: string;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** Every extension but the ones modelled below, in file order, kept as read. */
  otherExtensions: HeaderExtension[];
  backingFormat?: string;
  dataFile?: string;
  featureNames: FeatureName[];
  /** Persistent bitmaps, when the extension is there and the autoclear bit vouches for it. */
  bitmaps?: BitmapsExtension;
  /**
   * A bitmaps extension was found without its autoclear bit: a program that
   * knows nothing of bitmaps wrote the image, so (as QEMU does) it is
   * ignored, and dropped when the header is next written.
   */
  staleBitmaps?: boolean;
}

const corrupt = (msg: string) => new BlockError('InvalidFormat', msg);
const unsupported = (msg: string) => new BlockError('Unsupported', msg);

/** A u64 field as a number, refusing what a JS number cannot hold exactly. */
function u64(dv: DataView, at: number, what: string): number {
  const v = dv.getBigUint64(at);
  if (v >= BigInt(L.MAX_HOST_OFFSET)) throw corrupt(`${what} ${v} is too large`);
  return Number(v);
}

function checkAligned(offset: number, clusterSize: number, what: string): void {
  if (offset % clusterSize !== 0) throw corrupt(`${what} ${offset} is not aligned to a cluster`);
}

const text = new TextDecoder('utf-8', { fatal: false });

/** Reads the cluster size from the first bytes, so the caller knows how much to read. */
export function peekClusterBits(head: Uint8Array): number {
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (head.length < 4 || dv.getUint32(0) !== L.QCOW2_MAGIC) throw corrupt('not a qcow2 image');
  if (head.length < L.V2_HEADER_LENGTH) throw corrupt('the file is too short for a qcow2 header');
  const bits = dv.getUint32(20);
  if (bits < L.MIN_CLUSTER_BITS || bits > L.MAX_CLUSTER_BITS) {
    throw corrupt(`cluster_bits ${bits} is outside ${L.MIN_CLUSTER_BITS}..${L.MAX_CLUSTER_BITS}`);
  }
  return bits;
}

/**
 * Parses and validates the header from the image's first cluster (read with
 * zeros past the end of a shorter file, whose length is `fileSize`).
 */
export function parseHeader(cluster: Uint8Array, fileSize = cluster.length): Qcow2Header {
  const clusterBits = peekClusterBits(cluster);
  const clusterSize = 2 ** clusterBits;
  if (cluster.length < clusterSize) throw corrupt('the file ends inside its first cluster');
  const dv = new DataView(cluster.buffer, cluster.byteOffset, clusterSize);
  const version = dv.getUint32(4);
  if (version !== 2 && version !== 3) throw unsupported(`qcow2 version ${version} is not supported (only 2 and 3)`);
  // Otherwise the zeros past the end would be read as fields (header_length 0).
  if (fileSize < (version === 3 ? L.V3_MIN_HEADER_LENGTH : L.V2_HEADER_LENGTH)) {
    throw corrupt(`the file is too short for a qcow2 header (${fileSize} bytes)`);
  }

  const h: Qcow2Header = {
    version,
    clusterBits,
    size: u64(dv, 24, 'virtual size'),
    cryptMethod: dv.getUint32(32),
    l1Size: dv.getUint32(36),
    l1TableOffset: u64(dv, 40, 'L1 table offset'),
    refcountTableOffset: u64(dv, 48, 'refcount table offset'),
    refcountTableClusters: dv.getUint32(56),
    nbSnapshots: dv.getUint32(60),
    snapshotsOffset: u64(dv, 64, 'snapshot table offset'),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: L.V2_HEADER_LENGTH,
    compressionType: 0,
    otherExtensions: [],
    featureNames: [],
  };
  if (version === 3) {
    h.incompatible = dv.getBigUint64(72);
    h.compatible = dv.getBigUint64(80);
    h.autoclear = dv.getBigUint64(88);
    h.refcountOrder = dv.getUint32(96);
    h.headerLength = dv.getUint32(100);
    if (h.headerLength < L.V3_MIN_HEADER_LENGTH || h.headerLength % 8 !== 0 || h.headerLength > clusterSize) {
      throw corrupt(`header_length ${h.headerLength} is invalid (a multiple of 8 from 104 to the cluster size)`);
    }
    if (h.headerLength > 104) h.compressionType = cluster[104];
  }

  // Extensions first: the feature name table makes the feature errors readable.
  // As in QEMU, they end where the backing file name starts (or with the
  // cluster), and every one, the end marker too, must fit before that.
  const backingAt = Number(dv.getBigUint64(8));
  const extEnd = backingAt > 0 && backingAt < clusterSize ? backingAt : clusterSize;
  for (let at = h.headerLength; at < extEnd; ) {
    if (at + 8 > extEnd) throw corrupt('the header extensions run past their end');
    const type = dv.getUint32(at);
    const len = dv.getUint32(at + 4);
    if (len > extEnd - at - 8) {
      const what = type === L.EXT_END ? "the header extensions' end marker" : `header extension 0x${type.toString(16)}`;
      throw corrupt(`${what} is too large (${len} bytes)`);
    }
    if (type === L.EXT_END) break;
    const data = cluster.slice(at + 8, at + 8 + len);
    if (type === L.EXT_BACKING_FORMAT) h.backingFormat = text.decode(data);
    else if (type === L.EXT_DATA_FILE) h.dataFile = text.decode(data);
    else if (type === L.EXT_FEATURE_TABLE) h.featureNames = parseFeatureTable(data);
    else if (type === L.EXT_BITMAPS) {
      if (data.length !== L.BITMAPS_EXTENSION_BYTES) throw corrupt(`the bitmaps extension has an invalid length (${len} bytes)`);
      if (h.autoclear & L.AUTOCLEAR_BITMAPS) h.bitmaps = parseBitmapsExtension(data, clusterSize);
      else h.staleBitmaps = true;
    } else h.otherExtensions.push({ type, data });
    at += 8 + Math.ceil(len / 8) * 8;
  }

  validate(h, dv, clusterSize);
  const backingOffset = u64(dv, 8, 'backing file offset');
  if (backingOffset !== 0) {
    const len = dv.getUint32(16);
    if (len > L.MAX_BACKING_NAME) throw corrupt(`backing file name is too long (${len} bytes, at most ${L.MAX_BACKING_NAME})`);
    if (backingOffset + len > clusterSize) throw corrupt('the backing file name lies outside the first cluster');
    h.backingFile = text.decode(cluster.subarray(backingOffset, backingOffset + len));
  }
  return h;
}

function parseFeatureTable(data: Uint8Array): FeatureName[] {
  const out: FeatureName[] = [];
  for (let i = 0; i + 48 <= data.length; i += 48) {
    const raw = data.subarray(i + 2, i + 48);
    const end = raw.indexOf(0);
    out.push({ type: data[i], bit: data[i + 1], name: text.decode(end < 0 ? raw : raw.subarray(0, end)) });
  }
  return out;
}

function featureList(h: Qcow2Header, bits: bigint): string {
  const names: string[] = [];
  for (let b = 0; b < 64; b++) {
    if (!(bits & (1n << BigInt(b)))) continue;
    names.push(h.featureNames.find((f) => f.type === 0 && f.bit === b)?.name ?? `bit ${b}`);
  }
  return names.join(', ');
}

function validate(h: Qcow2Header, dv: DataView, clusterSize: number): void {
  const unknown = h.incompatible & ~L.INCOMPAT_KNOWN;
  if (unknown) throw unsupported(`the image uses unknown incompatible features: ${featureList(h, unknown)}`);
  if (h.autoclear & L.AUTOCLEAR_DATA_FILE_RAW && !(h.incompatible & L.INCOMPAT_DATA_FILE)) {
    throw corrupt('data-file-raw requires a data file');
  }
  const extended = (h.incompatible & L.INCOMPAT_EXTL2) !== 0n;
  if (extended && h.clusterBits < L.MIN_EXTL2_CLUSTER_BITS) {
    const sc = clusterSize / L.SUBCLUSTERS;
    throw unsupported(`subclusters of ${sc} bytes are not supported (extended L2 entries need clusters of at least 16 KiB)`);
  }
  if (extended && h.incompatible & L.INCOMPAT_DATA_FILE) {
    throw unsupported('extended L2 entries with an external data file are not supported');
  }
  if (h.refcountOrder > 6) throw corrupt(`refcount_order ${h.refcountOrder} is too large (at most 6)`);
  if (h.cryptMethod !== 0) throw unsupported(`encrypted qcow2 images (method ${h.cryptMethod}) are not supported yet`);
  const compressionBit = (h.incompatible & L.INCOMPAT_COMPRESSION) !== 0n;
  if (compressionBit !== (h.compressionType !== 0)) {
    throw corrupt('compression_type and the compression-type feature bit disagree');
  }
  if (h.compressionType > 1) throw unsupported(`unknown compression type ${h.compressionType}`);

  if (h.l1Size * 8 > L.MAX_L1_BYTES) throw corrupt(`the L1 table is too large (${h.l1Size} entries)`);
  const l2Entries = clusterSize / (extended ? L.L2_EXTENDED_ENTRY_BYTES : L.L2_ENTRY_BYTES);
  const needL1 = Math.ceil(h.size / clusterSize / l2Entries);
  if (h.l1Size < needL1) throw corrupt(`the L1 table (${h.l1Size} entries) is too small for the virtual size`);
  // As QEMU (validate_table_offset): tables start on a cluster even when they are empty.
  checkAligned(h.l1TableOffset, clusterSize, 'L1 table offset');
  if (h.refcountTableClusters === 0) throw corrupt('the refcount table is empty');
  if (h.refcountTableClusters > L.MAX_REFTABLE_BYTES / clusterSize) {
    throw corrupt(`the refcount table is too large (${h.refcountTableClusters} clusters)`);
  }
  checkAligned(h.refcountTableOffset, clusterSize, 'refcount table offset');
  if (h.refcountTableOffset === 0) throw corrupt('the refcount table overlaps the header');
  if (h.nbSnapshots > L.MAX_SNAPSHOTS) throw corrupt(`too many snapshots (${h.nbSnapshots}, at most ${L.MAX_SNAPSHOTS})`);
  checkAligned(h.snapshotsOffset, clusterSize, 'snapshot table offset');
  void dv;
}

/** Encodes the header, its extensions and the backing file name into one cluster. */
export function serializeHeader(h: Qcow2Header): Uint8Array {
  const clusterSize = 2 ** h.clusterBits;
  const out = new Uint8Array(clusterSize);
  const dv = new DataView(out.buffer);
  const enc = new TextEncoder();
  dv.setUint32(0, L.QCOW2_MAGIC);
  dv.setUint32(4, h.version);
  dv.setUint32(20, h.clusterBits);
  dv.setBigUint64(24, BigInt(h.size));
  dv.setUint32(32, h.cryptMethod);
  dv.setUint32(36, h.l1Size);
  dv.setBigUint64(40, BigInt(h.l1TableOffset));
  dv.setBigUint64(48, BigInt(h.refcountTableOffset));
  dv.setUint32(56, h.refcountTableClusters);
  dv.setUint32(60, h.nbSnapshots);
  dv.setBigUint64(64, BigInt(h.snapshotsOffset));
  if (h.version === 3) {
    dv.setBigUint64(72, h.incompatible);
    dv.setBigUint64(80, h.compatible);
    dv.setBigUint64(88, h.autoclear);
    dv.setUint32(96, h.refcountOrder);
    dv.setUint32(100, h.headerLength);
    if (h.headerLength > 104) out[104] = h.compressionType;
  }
  let at = h.version === 3 ? h.headerLength : L.V2_HEADER_LENGTH;
  const put = (type: number, data: Uint8Array) => {
    const padded = Math.ceil(data.length / 8) * 8;
    if (at + 8 + padded + 8 > clusterSize) throw new BlockError('InvalidArgument', 'the header extensions do not fit in one cluster');
    dv.setUint32(at, type);
    dv.setUint32(at + 4, data.length);
    out.set(data, at + 8);
    at += 8 + padded;
  };
  if (h.backingFormat !== undefined) put(L.EXT_BACKING_FORMAT, enc.encode(h.backingFormat));
  if (h.dataFile !== undefined) put(L.EXT_DATA_FILE, enc.encode(h.dataFile));
  if (h.featureNames.length > 0) put(L.EXT_FEATURE_TABLE, encodeFeatureTable(h.featureNames));
  if (h.bitmaps) put(L.EXT_BITMAPS, encodeBitmapsExtension(h.bitmaps));
  for (const ext of h.otherExtensions) put(ext.type, ext.data);
  at += 8; // the end marker (zeros)
  if (h.backingFile !== undefined) {
    const name = enc.encode(h.backingFile);
    if (name.length > L.MAX_BACKING_NAME) {
      throw new BlockError('InvalidArgument', `the backing file name is too long (at most ${L.MAX_BACKING_NAME} bytes)`);
    }
    if (at + name.length > clusterSize) throw new BlockError('InvalidArgument', 'the backing file name does not fit in the first cluster');
    out.set(name, at);
    dv.setBigUint64(8, BigInt(at));
    dv.setUint32(16, name.length);
  }
  return out;
}

function encodeFeatureTable(names: FeatureName[]): Uint8Array {
  const out = new Uint8Array(names.length * 48);
  const enc = new TextEncoder();
  names.forEach((f, i) => {
    out[i * 48] = f.type;
    out[i * 48 + 1] = f.bit;
    out.set(enc.encode(f.name).subarray(0, 46), i * 48 + 2);
  });
  return out;
}

/**
 * The feature names a version 3 header carries: like QEMU, only where the
 * 384-byte table leaves room in the first cluster.
 */
export function featureTableFor(clusterSize: number): FeatureName[] {
  return clusterSize > 4096 ? STANDARD_FEATURE_NAMES : [];
}

/** The feature names QEMU writes into new images, so other tools can explain them. */
export const STANDARD_FEATURE_NAMES: FeatureName[] = [
  { type: 0, bit: 0, name: 'dirty bit' },
  { type: 0, bit: 1, name: 'corrupt bit' },
  { type: 0, bit: 2, name: 'external data file' },
  { type: 0, bit: 3, name: 'compression type' },
  { type: 0, bit: 4, name: 'extended L2 entries' },
  { type: 1, bit: 0, name: 'lazy refcounts' },
  { type: 2, bit: 0, name: 'bitmaps' },
  { type: 2, bit: 1, name: 'raw external data' },
];
