import { stubDriver } from '../stub.js';
import { hasMagic } from '../../image/probe.js';

/** Sparse extents start "KDMV" (or "COWD" for ESX); text descriptors name themselves. */
export const vmdk = stubDriver({
  name: 'vmdk',
  description: 'VMware virtual disk',
  probe: ({ head }) =>
    hasMagic(head, 'KDMV') || hasMagic(head, 'COWD') || hasMagic(head, '# Disk DescriptorFile') ? 100 : 0,
});
