/** Option declarations shared by every format's create options. */
import type { OptionDecl } from './schema.js';

export const SIZE_OPTION: OptionDecl = {
  name: 'size',
  type: 'size',
  help: 'Virtual disk size',
  min: 0,
};

/**
 * What the file under any format takes when it is created (QEMU's file
 * protocol options, which qemu-img lists with every format's).
 */
export const FILE_CREATE_OPTIONS: readonly OptionDecl[] = [
  { name: 'nocow', type: 'bool', default: false, help: 'Turn off copy-on-write (valid only on btrfs)' },
];
