/**
 * VHDX, Hyper-V's virtual disk v2: dynamic and fixed images read and
 * written (through the metadata log), differencing images read, a dirty
 * log replayed (in memory when read-only), checked, grown, measured.
 */
import type { FormatDriver } from '../../image/driver.js';
import { hasMagic } from '../../image/probe.js';
import { createVhdx, VHDX_CREATE_OPTIONS } from './create.js';
import { FILE_SIGNATURE } from './limits.js';
import { measureVhdx } from './measure.js';
import { openVhdx } from './open.js';

export const vhdx: FormatDriver = {
  name: 'vhdx',
  description: 'Hyper-V virtual hard disk v2 (VHDX)',
  probe: ({ head }) => (hasMagic(head, FILE_SIGNATURE) ? 100 : 0),
  open: (proto, opts) => openVhdx(proto, opts),
  createOptions: VHDX_CREATE_OPTIONS,
  create: createVhdx,
  measure: measureVhdx,
};
