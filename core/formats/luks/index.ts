import { stubDriver } from '../stub.js';
import { hasMagic } from '../../image/probe.js';

/** "LUKS\xba\xbe" then a big-endian u16 version; QEMU opens version 1. */
export const luks = stubDriver({
  name: 'luks',
  description: 'LUKS encrypted disk',
  probe: ({ head }) => (hasMagic(head, 'LUKS\xba\xbe') && head[6] === 0 && head[7] === 1 ? 100 : 0),
});
