/**
 * Creating a VHDX image with qemu-img 7.2's options and layout: header
 * section, log (1 MiB on), BAT, 1 MiB of metadata, 5 MiB past the BAT's end
 * the data. A fixed image has every block FULLY_PRESENT in a preallocated
 * file (written zeros, not holes: see README, Windows and sparse VHDX);
 * block_state_zero decides whether a dynamic image's blocks start ZERO (as
 * QEMU's default) or NOT_PRESENT. Unlike QEMU, which also marks a fixed
 * image's blocks ZERO when block_state_zero is on (so every write then
 * allocates a second block at the end), Platter keeps a fixed image fixed.
 */
import type { CreateRequest } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import type { OptionDecl, OptionValues } from '../../options/schema.js';
import { SIZE_OPTION } from '../../options/common.js';
import { Bat, batGeometry, newBatLength, payloadIndex } from './bat.js';
import { newGuid } from './guid.js';
import { serializeHeader } from './header.js';
import * as L from './limits.js';
import { serializeMetadata } from './metadata.js';
import { serializeRegionTable } from './region.js';

export const VHDX_CREATE_OPTIONS: readonly OptionDecl[] = [
  { ...SIZE_OPTION, help: 'Virtual disk size; max of 64TB.' },
  { name: 'log_size', type: 'size', default: L.DEFAULT_LOG_SIZE, help: 'Log size; min 1MB.' },
  {
    name: 'block_size',
    type: 'size',
    default: 0,
    help: 'Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.',
  },
  {
    name: 'subformat',
    type: 'enum',
    values: ['dynamic', 'fixed'],
    default: 'dynamic',
    help: "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.",
  },
  {
    name: 'block_state_zero',
    type: 'bool',
    default: true,
    help: "Force use of payload blocks of type 'ZERO'. Non-standard, but default.",
  },
  {
    name: 'logical_sector_size',
    type: 'enum',
    values: ['512', '4096'],
    default: '512',
    help: "Logical sector size (Platter's own option; qemu-img always uses 512)",
  },
];

export interface VhdxLayout {
  size: number;
  blockSize: number;
  logicalSectorSize: number;
  logSize: number;
  fixed: boolean;
  zeroBlocks: boolean;
  batOffset: number;
  batLength: number;
  metadataOffset: number;
  dataOffset: number;
}

/** QEMU's automatic block size: larger blocks for larger disks, to keep the BAT small. */
function autoBlockSize(size: number): number {
  const GiB = 1024 * L.MiB;
  if (size > 32 * 1024 * GiB) return 64 * L.MiB;
  if (size > 100 * GiB) return 32 * L.MiB;
  if (size > GiB) return 16 * L.MiB;
  return 8 * L.MiB;
}

const invalid = (message: string) => new BlockError('InvalidArgument', message, { op: 'create' });

/** The layout a request gets, with qemu-img's silent rounding and its refusals. */
export function vhdxLayout(size: number, options: OptionValues): VhdxLayout {
  const logicalSectorSize = Number(options.logical_sector_size ?? 512);
  const rounded = Math.ceil(size / logicalSectorSize) * logicalSectorSize;
  if (rounded > L.MAX_DISK_SIZE) throw invalid('Image size too large; max of 64TB');
  const logSize = Math.ceil(Number(options.log_size ?? L.DEFAULT_LOG_SIZE) / L.MiB) * L.MiB;
  if (logSize > L.MAX_LOG_SIZE) throw invalid('Log size must be smaller than 4 GB');
  if (logSize < L.MIN_LOG_SIZE) throw invalid('Log size must be a multiple of 1 MB');
  let blockSize = Math.ceil(Number(options.block_size ?? 0) / L.MiB) * L.MiB;
  if (blockSize === 0) blockSize = autoBlockSize(rounded);
  blockSize = Math.min(blockSize, L.MAX_BLOCK_SIZE);
  if (blockSize & (blockSize - 1)) throw invalid('Block size must be a power of two');
  const g = batGeometry(rounded, blockSize, logicalSectorSize, false);
  const batOffset = Math.ceil((L.HEADER_SECTION_SIZE + logSize) / L.MiB) * L.MiB;
  const batLength = newBatLength(g);
  const metadataOffset = batOffset + batLength;
  return {
    size: rounded,
    blockSize,
    logicalSectorSize,
    logSize,
    fixed: options.subformat === 'fixed',
    zeroBlocks: options.block_state_zero !== false,
    batOffset,
    batLength,
    metadataOffset,
    dataOffset: batOffset + batLength + L.CREATE_DATA_GAP,
  };
}

/** The file identifier: signature and, as UTF-16LE, who made the file. */
function fileIdentifier(): Uint8Array {
  const id = new Uint8Array(L.HEADER_BLOCK_SIZE);
  id.set(new TextEncoder().encode(L.FILE_SIGNATURE), 0);
  const creator = Buffer.from('Platter', 'utf16le');
  id.set(creator, 8);
  return id;
}

export async function createVhdx(proto: Protocol, req: CreateRequest): Promise<void> {
  const l = vhdxLayout(req.size, req.options);
  const g = batGeometry(l.size, l.blockSize, l.logicalSectorSize, false);
  const bat = new Bat(g, new Uint8Array(g.entries * 8));
  for (let b = 0; b < g.dataBlocks; b++) {
    if (l.fixed) bat.set(payloadIndex(g, b), L.PAYLOAD_FULLY_PRESENT, l.dataOffset + b * l.blockSize);
    else if (l.zeroBlocks) bat.set(payloadIndex(g, b), L.PAYLOAD_ZERO, 0);
  }
  const end = l.fixed ? l.dataOffset + g.dataBlocks * l.blockSize : l.dataOffset;
  // A fixed image's blocks are written zeros, so nothing relies on holes.
  await proto.truncate(end, l.fixed ? 'full' : 'off');
  await proto.write(bat.bytes, l.batOffset);
  const metadata = serializeMetadata({
    blockSize: l.blockSize,
    fixed: l.fixed,
    diskSize: l.size,
    logicalSectorSize: l.logicalSectorSize,
    physicalSectorSize: l.logicalSectorSize,
    page83: newGuid(),
  });
  await proto.write(metadata, l.metadataOffset);
  const table = serializeRegionTable({
    bat: { offset: l.batOffset, length: l.batLength },
    metadata: { offset: l.metadataOffset, length: L.CREATE_METADATA_SIZE },
  });
  await proto.write(table, L.REGION_TABLE1_OFFSET);
  await proto.write(table, L.REGION_TABLE2_OFFSET);
  const sequence = BigInt(Math.floor(Math.random() * 0x100000000));
  const header = {
    sequence,
    fileWriteGuid: newGuid(),
    dataWriteGuid: newGuid(),
    logGuid: new Uint8Array(16),
    logVersion: L.LOG_VERSION,
    version: L.HEADER_VERSION,
    logLength: l.logSize,
    logOffset: L.HEADER_SECTION_SIZE,
    raw: new Uint8Array(L.HEADER_SIZE),
  };
  await proto.write(serializeHeader(header), L.HEADER1_OFFSET);
  await proto.write(serializeHeader({ ...header, sequence: sequence + 1n }), L.HEADER2_OFFSET);
  await proto.flush();
  // The identifier last: until it is written the file is not a VHDX image.
  await proto.write(fileIdentifier(), 0);
  await proto.flush();
}
