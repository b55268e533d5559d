/**
 * VDI, VirtualBox's disk image: dynamic and static images of 1 MiB blocks
 * (header v1.1), read, written, checked, grown and compacted.
 */
import type { FormatDriver } from '../../image/driver.js';
import { le32 } from '../../image/probe.js';
import { createVdi, VDI_CREATE_OPTIONS } from './create.js';
import { HEADER_BYTES, VDI_SIGNATURE } from './limits.js';
import { measureVdi } from './measure.js';
import { openVdi } from './open.js';

export const vdi: FormatDriver = {
  name: 'vdi',
  description: 'VirtualBox disk image (dynamic or static)',
  /** The signature sits at byte 64, after the "<<< ... >>>" banner, in a whole header sector. */
  probe: ({ head }) => (head.length >= HEADER_BYTES && le32(head, 0x40) === VDI_SIGNATURE ? 100 : 0),
  open: (proto, opts) => openVdi(proto, opts.readOnly),
  createOptions: VDI_CREATE_OPTIONS,
  create: createVdi,
  measure: measureVdi,
};
