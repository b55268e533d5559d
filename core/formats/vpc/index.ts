import { stubDriver } from '../stub.js';
import { hasMagic } from '../../image/probe.js';

/**
 * Dynamic and differencing VHDs start with a copy of the "conectix" footer;
 * fixed VHDs only have it at the end (QEMU probes those as raw; users expect
 * to see a VHD).
 */
export const vpc = stubDriver({
  name: 'vpc',
  description: 'Virtual PC / Hyper-V disk (VHD)',
  probe: ({ head, tail }) => (hasMagic(head, 'conectix') ? 100 : tail.length === 512 && hasMagic(tail, 'conectix') ? 50 : 0),
});
