import { stubDriver } from '../stub.js';

/** Not a file format: a FAT disk made on the fly from a folder ("fat:DIR"), never probed. */
export const vvfat = stubDriver({
  name: 'vvfat',
  description: 'Virtual FAT disk built from a folder',
  probe: () => 0,
});
