/**
 * Creating a VMDK of any subformat qemu-img makes, with its options, its
 * messages, and a descriptor with the same keys and values it writes.
 */
import { randomInt } from 'node:crypto';
import { basename } from 'node:path';
import type { CreateRequest } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { SIZE_OPTION } from '../../options/common.js';
import type { OptionDecl } from '../../options/schema.js';
import { formatDescriptor, parseDescriptor, type Descriptor, type ExtentLine } from './descriptor.js';
import { leBytes } from './entries.js';
import * as L from './limits.js';
import { looksLikeDescriptor } from './open.js';
import { gdEntriesFor, parseSparseHeader, serializeSparseHeader, type SparseHeader } from './sparse-header.js';
import { writeStreamTail } from './stream.js';

export const SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
] as const;
export const ADAPTER_TYPES = ['ide', 'buslogic', 'lsilogic', 'legacyESX'] as const;

/** qemu-img 7.2's vmdk options, with its defaults (compat6=off, hwversion=undefined). */
export const VMDK_CREATE_OPTIONS: readonly OptionDecl[] = [
  SIZE_OPTION,
  {
    name: 'adapter_type',
    type: 'enum',
    values: ADAPTER_TYPES,
    help: 'Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX',
  },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: "Must be 'vmdk' if present" },
  { name: 'compat6', type: 'bool', default: false, help: 'VMDK version 6 image' },
  { name: 'hwversion', type: 'string', default: 'undefined', help: 'VMDK hardware version' },
  { name: 'toolsversion', type: 'string', help: 'VMware guest tools version' },
  {
    name: 'subformat',
    type: 'enum',
    values: SUBFORMATS,
    // qemu-img's words, trailing space included.
    help:
      'VMDK flat extent format, can be one of ' +
      '{monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ',
  },
  { name: 'zeroed_grain', type: 'bool', help: 'Enable efficient zero writes using the zeroed-grain GTE feature' },
];

const fail = (kind: 'InvalidArgument' | 'Unsupported', m: string) => new BlockError(kind, m);

/** A new sparse extent's header and tables, as QEMU lays them out: descriptor room, both directories, every table. */
function sparseLayout(
  capacity: number,
  compressed: boolean,
  zeroedGrain: boolean,
): { header: SparseHeader; gd: Uint32Array; rgd: Uint32Array } {
  const grain = L.DEFAULT_GRAIN_SECTORS;
  const gtCount = gdEntriesFor(capacity, grain, L.GTES_PER_GT);
  if (gtCount > L.MAX_GD_ENTRIES) throw fail('InvalidArgument', 'the image is too large for a VMDK sparse extent');
  const gtSectors = (L.GTES_PER_GT * 4) / L.SECTOR;
  const gdSectors = Math.ceil((gtCount * 4) / L.SECTOR);
  const rgdOffset = 1 + L.EMBEDDED_DESCRIPTOR_SECTORS;
  const gdOffset = rgdOffset + gdSectors + gtSectors * gtCount;
  const end = gdOffset + gdSectors + gtSectors * gtCount;
  const header: SparseHeader = {
    version: compressed ? 3 : zeroedGrain ? 2 : 1,
    flags:
      L.FLAG_NL_DETECT | (compressed ? L.FLAG_COMPRESSED | L.FLAG_MARKERS : L.FLAG_RGD) | (zeroedGrain ? L.FLAG_ZERO_GRAIN : 0),
    capacity,
    grainSectors: grain,
    descriptorOffset: 1,
    descriptorSectors: L.EMBEDDED_DESCRIPTOR_SECTORS,
    gtesPerGt: L.GTES_PER_GT,
    rgdOffset: compressed ? 0 : rgdOffset,
    gdOffset: compressed ? undefined : gdOffset,
    overhead: Math.ceil((compressed ? rgdOffset : end) / grain) * grain,
    uncleanShutdown: 0,
    compressAlgorithm: compressed ? L.COMPRESSION_DEFLATE : L.COMPRESSION_NONE,
    newlinesIntact: true,
  };
  const gd = new Uint32Array(gtCount);
  const rgd = new Uint32Array(gtCount);
  for (let i = 0; i < gtCount; i++) {
    rgd[i] = rgdOffset + gdSectors + i * gtSectors;
    gd[i] = gdOffset + gdSectors + i * gtSectors;
  }
  return { header, gd, rgd };
}

/**
 * Writes an empty sparse extent. Plain ones get every grain table up front
 * (as QEMU makes them); streams get VMware's layout: header, descriptor
 * room, then an empty directory, footer and end-of-stream marker.
 */
async function writeSparseExtent(
  file: Protocol,
  capacity: number,
  compressed: boolean,
  zeroedGrain: boolean,
): Promise<SparseHeader> {
  const { header, gd, rgd } = sparseLayout(capacity, compressed, zeroedGrain);
  await file.write(serializeSparseHeader(header), 0);
  if (compressed) {
    await file.truncate(header.overhead * L.SECTOR);
    await writeStreamTail(file, header, header.overhead, new Uint32Array(gd.length), new Map());
  } else {
    await file.truncate(header.overhead * L.SECTOR);
    await file.write(leBytes(rgd), header.rgdOffset * L.SECTOR);
    await file.write(leBytes(gd), header.gdOffset! * L.SECTOR);
  }
  return header;
}

/** Splits "dir/name.vmdk" into "name" and ".vmdk", as qemu-img names extent files. */
function nameParts(path: string): { prefix: string; postfix: string } {
  const base = basename(path);
  const dot = base.lastIndexOf('.');
  return dot < 0 ? { prefix: base, postfix: '' } : { prefix: base.slice(0, dot), postfix: base.slice(dot) };
}

/** The CID of the VMDK in `file` (its embedded or own descriptor). */
async function readCid(file: Protocol): Promise<number> {
  const size = await file.size();
  const head = new Uint8Array(Math.min(size, L.SECTOR));
  await file.read(head, 0);
  let text: string;
  if (String.fromCharCode(...head.subarray(0, 4)) === L.SPARSE_MAGIC && head.length === L.SECTOR) {
    const h = parseSparseHeader(head);
    const bytes = new Uint8Array(Math.min(h.descriptorSectors * L.SECTOR, L.MAX_DESCRIPTOR_BYTES));
    await file.read(bytes, h.descriptorOffset * L.SECTOR);
    text = new TextDecoder('latin1').decode(bytes);
  } else if (looksLikeDescriptor(head) && size <= L.MAX_DESCRIPTOR_BYTES) {
    const bytes = new Uint8Array(size);
    await file.read(bytes, 0);
    text = new TextDecoder('latin1').decode(bytes);
  } else {
    throw fail('InvalidArgument', 'Invalid backing file format: it must be vmdk');
  }
  return parseDescriptor(text).cid;
}

export async function createVmdk(proto: Protocol, req: CreateRequest): Promise<void> {
  const o = req.options;
  const size = Math.ceil(req.size / L.SECTOR) * L.SECTOR;
  const subformat = (o.subformat as string | undefined) ?? 'monolithicSparse';
  const adapter = (o.adapter_type as string | undefined) ?? 'ide';
  const backing = o.backing_file as string | undefined;
  if (o.backing_fmt !== undefined && o.backing_fmt !== 'vmdk') throw fail('InvalidArgument', 'backing_file must be a vmdk image');
  let hwversion = o.hwversion === 'undefined' ? undefined : (o.hwversion as string | undefined);
  if (o.compat6 === true) {
    if (hwversion !== undefined) throw fail('InvalidArgument', 'compat6 cannot be enabled with hwversion set');
    hwversion = '6';
  }
  const split = subformat.startsWith('twoGb');
  const flat = subformat.endsWith('Flat');
  const compressed = subformat === 'streamOptimized';
  const zeroedGrain = o.zeroed_grain === true;
  if (flat && backing !== undefined) throw fail('Unsupported', "Flat image can't have backing file");
  if (flat && zeroedGrain) throw fail('Unsupported', "Flat image can't enable zeroed grain");
  if (size / L.SECTOR > L.MAX_CAPACITY_SECTORS) throw fail('InvalidArgument', 'the image is too large');

  let parentCid = L.NO_PARENT_CID;
  if (backing !== undefined) {
    if (!req.openFile) throw fail('Unsupported', 'the backing file cannot be opened here to read its CID');
    const parent = await req.openFile(backing);
    try {
      parentCid = await readCid(parent);
    } finally {
      await parent.close();
    }
  }

  const extents: ExtentLine[] = [];
  const { prefix, postfix } = nameParts(proto.name);
  const monolithicSparse = !split && !flat;
  if (monolithicSparse) {
    await writeSparseExtent(proto, size / L.SECTOR, compressed, zeroedGrain);
    extents.push({ access: 'RW', sectors: size / L.SECTOR, type: 'SPARSE', file: basename(proto.name) });
  } else {
    if (!req.createFile) throw fail('Unsupported', 'extent files cannot be created here');
    const step = split ? L.SPLIT_EXTENT_BYTES : size;
    for (let done = 0, i = 1; done < size; done += step, i++) {
      const len = Math.min(step, size - done);
      const name = split ? `${prefix}-${flat ? 'f' : 's'}${String(i).padStart(3, '0')}${postfix}` : `${prefix}-flat${postfix}`;
      const file = await req.createFile(name);
      if (flat) await file.truncate(len);
      else await writeSparseExtent(file, len / L.SECTOR, false, zeroedGrain);
      const sectors = len / L.SECTOR;
      extents.push(flat ? { access: 'RW', sectors, type: 'FLAT', file: name, offset: 0 } : { access: 'RW', sectors, type: 'SPARSE', file: name });
    }
  }

  // Geometry as VMware sets it: 63 sectors per track, 16 heads for IDE and 255 for the SCSI adapters.
  const heads = adapter === 'ide' ? 16 : 255;
  const descriptor: Descriptor = {
    version: 1,
    cid: randomInt(0, 2 ** 32 - 1),
    parentCid,
    createType: subformat,
    parentFileNameHint: backing,
    extents,
    ddb: new Map([
      ['virtualHWVersion', hwversion ?? '4'],
      ['geometry.cylinders', String(Math.floor(size / (63 * heads * L.SECTOR)))],
      ['geometry.heads', String(heads)],
      ['geometry.sectors', '63'],
      ['adapterType', adapter],
      ['toolsVersion', (o.toolsversion as string | undefined) ?? '2147483647'],
    ]),
  };
  const text = new TextEncoder().encode(formatDescriptor(descriptor));
  if (monolithicSparse) {
    if (text.length > L.EMBEDDED_DESCRIPTOR_SECTORS * L.SECTOR) {
      throw fail('InvalidArgument', 'the descriptor is too long to embed (a long backing file name?)');
    }
    await proto.write(text, L.SECTOR);
  } else {
    await proto.write(text, 0);
    await proto.truncate(text.length);
  }
}
