/**
 * Creating a VHD as qemu-img 7.2 does. Dynamic: footer copy, dynamic header,
 * BAT of 2 MiB blocks (all unallocated), footer. Fixed: the guest's bytes
 * (a sparse file) and the footer. The size is rounded up to a CHS geometry
 * unless force_size asks for the exact size (creator "qem2"), which Hyper-V
 * and Azure need (Azure takes fixed VHDs whose size is a whole number of MiB).
 */
import type { CreateRequest } from '../../image/driver.js';
import type { Protocol } from '../../io/protocol.js';
import type { OptionDecl } from '../../options/schema.js';
import { SIZE_OPTION } from '../../options/common.js';
import { newDynamicHeader } from './dynamic-header.js';
import { newFooter } from './footer.js';
import { newImageSize } from './geometry.js';
import * as L from './limits.js';

export const VPC_CREATE_OPTIONS: readonly OptionDecl[] = [
  SIZE_OPTION,
  {
    name: 'subformat',
    type: 'enum',
    values: ['dynamic', 'fixed'],
    default: 'dynamic',
    help:
      'Type of virtual hard disk format: dynamic (grows as written) or fixed (every byte allocated; what Azure takes)',
  },
  {
    name: 'force_size',
    type: 'bool',
    default: false,
    help:
      'Use the exact size given instead of rounding it up to a CHS geometry (Virtual PC cannot use such images; ' +
      'Hyper-V and Azure need exact sizes: for Azure, subformat=fixed,force_size=on and a whole number of MiB)',
  },
];

/** Where the BAT goes in a new dynamic image: after the footer copy and the dynamic header. */
const TABLE_OFFSET = L.FOOTER_BYTES + L.DYN_HEADER_BYTES;

/** The layout of a new image of `size` requested bytes: its real size, and for dynamic images the BAT's. */
export function vpcLayout(size: number, forceSize: boolean) {
  const { size: guest, geometry } = newImageSize(size, forceSize);
  const entries = Math.ceil(guest / L.DEFAULT_BLOCK_SIZE);
  const tableBytes = Math.ceil((entries * 4) / L.SECTOR_SIZE) * L.SECTOR_SIZE;
  return { size: guest, geometry, entries, tableBytes, metadataBytes: TABLE_OFFSET + tableBytes + L.FOOTER_BYTES };
}

export async function createVpc(proto: Protocol, req: CreateRequest): Promise<void> {
  const forceSize = req.options.force_size === true;
  const fixed = req.options.subformat === 'fixed';
  const layout = vpcLayout(req.size, forceSize);
  const diskType = fixed ? L.TYPE_FIXED : L.TYPE_DYNAMIC;
  const footer = newFooter({ diskType, size: layout.size, geometry: layout.geometry, forceSize });
  if (fixed) {
    // A sparse file of zeros, as qemu-img makes it; the footer last.
    await proto.truncate(layout.size + L.FOOTER_BYTES);
    await proto.write(footer, layout.size);
    return;
  }
  await proto.write(new Uint8Array(layout.tableBytes).fill(0xff), TABLE_OFFSET);
  await proto.write(newDynamicHeader(TABLE_OFFSET, layout.entries, L.DEFAULT_BLOCK_SIZE), L.FOOTER_BYTES);
  await proto.write(footer, TABLE_OFFSET + layout.tableBytes);
  // The copy at the start last: until it is there the file is not a dynamic VHD.
  await proto.write(footer, 0);
}
