import { stubDriver } from '../stub.js';
import { hasMagic } from '../../image/probe.js';

export const bochs = stubDriver({
  name: 'bochs',
  description: 'Bochs growing disk image (read-only)',
  probe: ({ head }) => (hasMagic(head, 'Bochs Virtual HD Image') ? 100 : 0),
});
