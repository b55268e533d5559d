import { stubDriver } from '../stub.js';
import { hasMagic } from '../../image/probe.js';

export const qed = stubDriver({
  name: 'qed',
  description: 'QEMU enhanced disk (legacy)',
  probe: ({ head }) => (hasMagic(head, 'QED\0') ? 100 : 0),
});
