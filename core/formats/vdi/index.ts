import { stubDriver } from '../stub.js';
import { le32 } from '../../image/probe.js';

/** The signature 0xbeda107f sits at byte 64, after the "<<< ... >>>" banner. */
export const vdi = stubDriver({
  name: 'vdi',
  description: 'VirtualBox disk image',
  probe: ({ head }) => (le32(head, 0x40) === 0xbeda107f ? 100 : 0),
});
