/** Creating a qcow2 image: header, refcount structures and an empty L1 table. */
import { BlockError } from '../../image/errors.js';
import type { CreateRequest } from '../../image/driver.js';
import type { Protocol } from '../../io/protocol.js';
import type { OptionDecl, OptionValues } from '../../options/schema.js';
import { SIZE_OPTION } from '../../options/common.js';
import { COMPRESSION_TYPES, type CompressionType } from './compression.js';
import { featureTableFor, type Qcow2Header } from './header.js';
import { Qcow2Image } from './image.js';
import * as L from './limits.js';
import { Refcounts } from './refcounts.js';

export const QCOW2_CREATE_OPTIONS: readonly OptionDecl[] = [
  SIZE_OPTION,
  { name: 'compat', type: 'enum', values: ['0.10', '1.1'], default: '1.1', help: 'Compatibility level (0.10 = version 2, 1.1 = version 3)' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  {
    name: 'cluster_size',
    type: 'size',
    default: 65536,
    min: 2 ** L.MIN_CLUSTER_BITS,
    max: 2 ** L.MAX_CLUSTER_BITS,
    powerOfTwo: true,
    help: 'qcow2 cluster size',
  },
  {
    name: 'preallocation',
    type: 'enum',
    values: ['off', 'metadata', 'falloc', 'full'],
    default: 'off',
    help: 'Preallocation mode',
  },
  {
    name: 'lazy_refcounts',
    type: 'bool',
    default: false,
    requires: [{ option: 'compat', value: '1.1' }],
    help: 'Postpone refcount updates',
  },
  {
    name: 'refcount_bits',
    type: 'number',
    default: 16,
    min: 1,
    max: 64,
    powerOfTwo: true,
    help: 'Width of a reference count entry in bits',
  },
  { name: 'compression_type', type: 'enum', values: [...COMPRESSION_TYPES], default: 'zlib', help: 'Compression method used for image cluster compression' },
  {
    name: 'data_file',
    type: 'string',
    requires: [{ option: 'compat', value: '1.1' }],
    help: 'File name of an external data file',
  },
  { name: 'data_file_raw', type: 'bool', default: false, help: 'The external data file must stay valid as a raw image' },
  // compat=1.1 and clusters of at least 16 KiB: checked by checkExtendedL2, with qemu-img's words.
  { name: 'extended_l2', type: 'bool', default: false, help: 'Extended L2 tables' },
];

const AMENDABLE = ['size', 'compat', 'backing_file', 'backing_fmt', 'lazy_refcounts', 'refcount_bits', 'data_file', 'data_file_raw'];

/**
 * The create options amend can change. Without defaults (what is left out
 * stays as it is) and without `requires`: whether lazy_refcounts needs
 * compat=1.1 depends on the image, and amend checks it.
 */
export const QCOW2_AMEND_OPTIONS: readonly OptionDecl[] = QCOW2_CREATE_OPTIONS.filter((d) => AMENDABLE.includes(d.name)).map(
  (d) => ({ ...d, default: undefined, requires: undefined }) as OptionDecl,
);

/** Refuses extended_l2 where qemu-img refuses it, with its messages. */
export function checkExtendedL2(o: OptionValues): void {
  if (!o.extended_l2) return;
  if (o.compat === '0.10') {
    throw new BlockError('InvalidArgument', 'Extended L2 entries are only supported with compatibility level 1.1 and above');
  }
  if ((o.cluster_size as number) < 2 ** L.MIN_EXTL2_CLUSTER_BITS) {
    const min = 2 ** L.MIN_EXTL2_CLUSTER_BITS;
    throw new BlockError('InvalidArgument', `Extended L2 entries are only supported with cluster sizes of at least ${min} bytes`);
  }
}

/** L1 entries a guest of `size` bytes needs; refused past QEMU's 32 MiB L1 limit. */
export function l1EntriesFor(size: number, clusterSize: number, extended = false): number {
  const l2Entries = clusterSize / (extended ? L.L2_EXTENDED_ENTRY_BYTES : L.L2_ENTRY_BYTES);
  const entries = Math.ceil(size / clusterSize / l2Entries);
  if (entries * 8 > L.MAX_L1_BYTES) {
    throw new BlockError('InvalidArgument', 'the image size is too large for this cluster size (try a larger cluster_size)');
  }
  return entries;
}

export async function createQcow2(proto: Protocol, req: CreateRequest): Promise<Qcow2Image> {
  const o = req.options;
  const version = o.compat === '0.10' ? 2 : 3;
  const clusterSize = o.cluster_size as number;
  const clusterBits = Math.log2(clusterSize);
  const refcountBits = o.refcount_bits as number;
  if (version === 2 && refcountBits !== 16) {
    throw new BlockError('InvalidArgument', 'refcount_bits other than 16 needs compat=1.1');
  }
  const compressionType = COMPRESSION_TYPES.indexOf(o.compression_type as CompressionType);
  if (version === 2 && compressionType !== 0) {
    throw new BlockError('InvalidArgument', `compression_type=${o.compression_type} needs compat=1.1`);
  }
  checkExtendedL2(o);
  // Whole sectors, rounded up as qemu-img rounds them.
  const size = Math.ceil(req.size / 512) * 512;
  const dataFileName = typeof o.data_file === 'string' ? o.data_file : undefined;
  const rawData = o.data_file_raw === true;
  if (rawData && dataFileName === undefined) throw new BlockError('InvalidArgument', 'data_file_raw needs data_file');
  if (rawData && o.backing_file !== undefined) {
    // Reads of unallocated clusters would show the backing file, not the raw data file.
    throw new BlockError('InvalidArgument', 'a backing file and data_file_raw cannot be used together');
  }
  if (o.extended_l2 === true && dataFileName !== undefined) {
    // Guest cluster 0 would sit at host offset 0, which extended entries cannot say.
    throw new BlockError('Unsupported', 'extended_l2 with an external data file is not supported');
  }
  const extended = o.extended_l2 === true;
  const l1Size = l1EntriesFor(size, clusterSize, extended);
  const header: Qcow2Header = {
    version,
    clusterBits,
    size,
    cryptMethod: 0,
    l1Size,
    l1TableOffset: 0,
    refcountTableOffset: clusterSize,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible:
      (compressionType ? L.INCOMPAT_COMPRESSION : 0n) |
      (dataFileName !== undefined ? L.INCOMPAT_DATA_FILE : 0n) |
      (extended ? L.INCOMPAT_EXTL2 : 0n),
    compatible: o.lazy_refcounts ? L.COMPAT_LAZY_REFCOUNTS : 0n,
    autoclear: rawData ? L.AUTOCLEAR_DATA_FILE_RAW : 0n,
    refcountOrder: Math.log2(refcountBits),
    headerLength: version === 3 ? L.V3_HEADER_LENGTH : L.V2_HEADER_LENGTH,
    compressionType,
    otherExtensions: [],
    featureNames: version === 3 ? featureTableFor(clusterSize) : [],
    dataFile: dataFileName,
  };
  if (typeof o.backing_file === 'string') {
    // Standard preallocated clusters would hide the backing file.
    if (o.preallocation !== 'off' && !extended) {
      throw new BlockError('InvalidArgument', 'Backing file and preallocation can only be used at the same time if extended_l2 is on');
    }
    header.backingFile = o.backing_file;
    if (typeof o.backing_fmt === 'string') header.backingFormat = o.backing_fmt;
  } else if (o.backing_fmt !== undefined) {
    throw new BlockError('InvalidArgument', 'backing_fmt needs backing_file');
  }

  // Cluster 0: header; 1: refcount table; 2: the first refcount block, which
  // counts clusters 0-2. The L1 table is then allocated like any cluster.
  const { serializeHeader } = await import('./header.js');
  await proto.write(serializeHeader(header), 0);
  const table = new Uint8Array(clusterSize);
  new DataView(table.buffer).setBigUint64(0, BigInt(2 * clusterSize));
  await proto.write(table, clusterSize);
  await proto.write(new Uint8Array(clusterSize), 2 * clusterSize);
  const refcounts = new Refcounts(
    proto,
    clusterBits,
    header.refcountOrder,
    { offset: clusterSize, clusters: 1 },
    [2 * clusterSize],
    3 * clusterSize,
    async (loc) => {
      header.refcountTableOffset = loc.offset;
      header.refcountTableClusters = loc.clusters;
      await proto.write(serializeHeader(header), 0);
    },
  );
  await refcounts.update(0, 3, 1);
  // An empty guest has no L1 table at all (offset 0), as in QEMU.
  const l1Clusters = Math.ceil((l1Size * 8) / clusterSize);
  header.l1TableOffset = l1Clusters ? await refcounts.allocate(l1Clusters) : 0;
  const end = l1Clusters ? header.l1TableOffset + l1Clusters * clusterSize : 3 * clusterSize;
  if ((await proto.size()) < end) await proto.truncate(end);
  await proto.write(serializeHeader(header), 0);
  // The data file: as large as the guest, sparse unless preallocated.
  let dataFile: Protocol | undefined;
  if (dataFileName !== undefined) {
    if (!req.createFile) throw new BlockError('Unsupported', 'an external data file cannot be created here');
    dataFile = await req.createFile(dataFileName);
    await dataFile.truncate(size, o.preallocation === 'falloc' || o.preallocation === 'full' ? o.preallocation : 'off');
  }
  const image = new Qcow2Image(proto, header, new BigUint64Array(l1Size), refcounts, false, [], dataFile);
  // A raw data file needs every cluster mapped, or the qcow2 view would read zeros where it has data.
  const prealloc = rawData && o.preallocation === 'off' ? 'metadata' : (o.preallocation as string);
  if (prealloc === 'metadata' || prealloc === 'falloc' || prealloc === 'full') await image.preallocate(prealloc);
  return image;
}
