import { stubDriver } from '../stub.js';
import { hasMagic } from '../../image/probe.js';

/** UDIF images end with a 512-byte "koly" trailer; the extension is a weak hint. */
export const dmg = stubDriver({
  name: 'dmg',
  description: 'Apple disk image (read-only)',
  probe: ({ tail, filename }) =>
    tail.length === 512 && hasMagic(tail, 'koly') ? 100 : filename.toLowerCase().endsWith('.dmg') ? 2 : 0,
});
