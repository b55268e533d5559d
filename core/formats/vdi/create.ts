/** Creating a VDI image as qemu-img does: header, block map, and for static images every data block. */
import type { CreateRequest } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import type { OptionDecl } from '../../options/schema.js';
import { SIZE_OPTION } from '../../options/common.js';
import { bmapBytes, newHeader, serializeHeader } from './header.js';
import * as L from './limits.js';

export const VDI_CREATE_OPTIONS: readonly OptionDecl[] = [
  SIZE_OPTION,
  { name: 'static', type: 'bool', default: false, help: 'VDI static (pre-allocated) image' },
];

/** The guest size a request gets: whole sectors (QEMU rounds up silently), within QEMU's limit. */
export function vdiDiskSize(size: number): number {
  const rounded = Math.ceil(size / L.SECTOR_SIZE) * L.SECTOR_SIZE;
  if (rounded > L.MAX_DISK_SIZE) {
    throw new BlockError(
      'InvalidArgument',
      `Unsupported VDI image size (size is 0x${rounded.toString(16)}, max supported is 0x${L.MAX_DISK_SIZE.toString(16)})`,
    );
  }
  return rounded;
}

export async function createVdi(proto: Protocol, req: CreateRequest): Promise<void> {
  const isStatic = req.options.static === true;
  const h = newHeader(vdiDiskSize(req.size), isStatic ? L.TYPE_STATIC : L.TYPE_DYNAMIC);
  const map = new Uint8Array(bmapBytes(h.blocksInImage));
  const v = new DataView(map.buffer);
  for (let i = 0; i < h.blocksInImage; i++) v.setUint32(i * 4, isStatic ? i : L.UNALLOCATED, true);
  await proto.write(map, h.offsetBmap);
  // Static data blocks are the file's zero-filled tail, sparse like QEMU's.
  const end = isStatic ? h.offsetData + h.blocksInImage * L.BLOCK_SIZE : h.offsetData;
  if ((await proto.size()) < end) await proto.truncate(end);
  // The header last: until it is written the file is not a VDI image.
  await proto.write(serializeHeader(h), 0);
}
