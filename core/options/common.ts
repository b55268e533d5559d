/** Option declarations shared by every format's create options. */
import type { OptionDecl } from './schema.js';

export const SIZE_OPTION: OptionDecl = {
  name: 'size',
  type: 'size',
  help: 'Virtual disk size',
  min: 0,
};
