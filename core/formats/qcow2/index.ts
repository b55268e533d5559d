import { stubDriver } from '../stub.js';
import { be32, hasMagic } from '../../image/probe.js';

/** Magic "QFI\xfb" followed by version 2 or 3 (version 1 is qcow). */
export const qcow2 = stubDriver({
  name: 'qcow2',
  description: 'QEMU copy-on-write v2/v3 (snapshots, backing files, compression)',
  probe: ({ head }) => (hasMagic(head, 'QFI\xfb') && (be32(head, 4) ?? 0) >= 2 ? 100 : 0),
});
