/**
 * VMware's VMDK: monolithic and split, sparse and flat, streamOptimized,
 * descriptor files with several extents, parent/child chains.
 */
import type { FormatDriver } from '../../image/driver.js';
import { hasMagic } from '../../image/probe.js';
import { createVmdk, VMDK_CREATE_OPTIONS } from './create.js';
import { looksLikeDescriptor, openVmdk } from './open.js';
import { COWD_MAGIC, SPARSE_MAGIC } from './limits.js';

export const vmdk: FormatDriver = {
  name: 'vmdk',
  description: 'VMware virtual disk',
  /** Sparse extents start "KDMV" (or "COWD" for ESX); descriptor files start with comments, then "version=". */
  probe: ({ head }) => (hasMagic(head, SPARSE_MAGIC) || hasMagic(head, COWD_MAGIC) || looksLikeDescriptor(head) ? 100 : 0),
  open: (proto, opts) => openVmdk(proto, opts),
  createOptions: VMDK_CREATE_OPTIONS,
  create: createVmdk,
};
