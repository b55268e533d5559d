import { stubDriver } from '../stub.js';
import { hasMagic } from '../../image/probe.js';

export const vhdx = stubDriver({
  name: 'vhdx',
  description: 'Hyper-V virtual hard disk v2 (VHDX)',
  probe: ({ head }) => (hasMagic(head, 'vhdxfile') ? 100 : 0),
});
