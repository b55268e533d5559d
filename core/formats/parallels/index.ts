import { stubDriver } from '../stub.js';
import { hasMagic, le32 } from '../../image/probe.js';

/** Two magics (the second for images over 2 TiB), then version 2. */
export const parallels = stubDriver({
  name: 'parallels',
  description: 'Parallels disk image (read-only)',
  probe: ({ head }) =>
    (hasMagic(head, 'WithoutFreeSpace') || hasMagic(head, 'WithouFreSpacExt')) && le32(head, 16) === 2 ? 100 : 0,
});
