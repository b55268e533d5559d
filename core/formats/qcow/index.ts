import { stubDriver } from '../stub.js';
import { be32, hasMagic } from '../../image/probe.js';

/** Magic "QFI\xfb" followed by version 1. */
export const qcow = stubDriver({
  name: 'qcow',
  description: 'QEMU copy-on-write, version 1 (legacy)',
  probe: ({ head }) => (hasMagic(head, 'QFI\xfb') && be32(head, 4) === 1 ? 100 : 0),
});
