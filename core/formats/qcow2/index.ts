/**
 * qcow2, QEMU's native format: versions 2 and 3, any cluster size and
 * refcount width, zero and compressed clusters, backing files.
 */
import type { FormatDriver } from '../../image/driver.js';
import { be32, hasMagic } from '../../image/probe.js';
import { createQcow2, QCOW2_AMEND_OPTIONS, QCOW2_CREATE_OPTIONS } from './create.js';
import { openQcow2 } from './open.js';
import { measureQcow2 } from './measure.js';

export const qcow2: FormatDriver = {
  name: 'qcow2',
  description: 'QEMU copy-on-write v2/v3 (snapshots, backing files, compression)',
  /** Magic "QFI\xfb" followed by version 2 or 3 (version 1 is qcow). */
  probe: ({ head }) => (hasMagic(head, 'QFI\xfb') && (be32(head, 4) ?? 0) >= 2 ? 100 : 0),
  open: (proto, opts) => openQcow2(proto, opts.readOnly, opts.snapshot, opts.repair, opts.openFile, opts.forCheck),
  createOptions: QCOW2_CREATE_OPTIONS,
  async create(proto, req) {
    const image = await createQcow2(proto, req);
    await image.close();
  },
  amendOptions: QCOW2_AMEND_OPTIONS,
  measure: measureQcow2,
};
