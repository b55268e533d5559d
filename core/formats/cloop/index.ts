import { stubDriver } from '../stub.js';
import { hasMagic } from '../../image/probe.js';

/** cloop files start with a shell script that mounts them. */
const CLOOP_V2_HEADER = '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n';

export const cloop = stubDriver({
  name: 'cloop',
  description: 'Compressed loop image (read-only)',
  probe: ({ head }) => (hasMagic(head, CLOOP_V2_HEADER) ? 100 : 0),
});
