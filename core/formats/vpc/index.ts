/**
 * VHD (Virtual PC, Hyper-V, Azure; "vpc" in QEMU): fixed and dynamic images
 * read and written, differencing images read through their parent.
 */
import type { FormatDriver } from '../../image/driver.js';
import { hasMagic } from '../../image/probe.js';
import { createVpc, VPC_CREATE_OPTIONS } from './create.js';
import { FOOTER_BYTES, FOOTER_COOKIE } from './limits.js';
import { measureVpc } from './measure.js';
import { openVpc } from './open.js';

export const vpc: FormatDriver = {
  name: 'vpc',
  description: 'Virtual PC / Hyper-V disk (VHD)',
  /**
   * Dynamic and differencing VHDs start with a copy of the "conectix" footer;
   * fixed VHDs only have it at the end (QEMU probes those as raw; users expect
   * to see a VHD).
   */
  probe: ({ head, tail }) =>
    hasMagic(head, FOOTER_COOKIE) ? 100 : tail.length === FOOTER_BYTES && hasMagic(tail, FOOTER_COOKIE) ? 50 : 0,
  open: (proto, opts) => openVpc(proto, opts.readOnly),
  createOptions: VPC_CREATE_OPTIONS,
  create: createVpc,
  measure: measureVpc,
};
