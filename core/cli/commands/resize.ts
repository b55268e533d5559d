import { BlockError } from '../../image/errors.js';
import { RESIZE_PREALLOCATION_MODES, type ResizePreallocation } from '../../image/driver.js';
import { resize } from '../../ops/resize.js';
import { parseSize } from '../../options/size.js';
import { expectPositionals, flag, str } from '../args.js';
import { FORMAT_OPTION, QUIET_OPTION, OPEN_OPTIONS, type Command } from '../command.js';

export const resizeCommand: Command = {
  name: 'resize',
  summary: 'change the virtual size of an image (shrinking needs --shrink)',
  usage: '[-q] [-f FMT] [--preallocation=off|metadata|falloc|full] [--shrink] FILE [+|-]SIZE',
  options: { ...FORMAT_OPTION, ...OPEN_OPTIONS, ...QUIET_OPTION, preallocation: { type: 'string' }, shrink: { type: 'boolean' } },
  // "-5M" is a size, not a flag (as in qemu-img), unless it already follows "--".
  preprocess: (argv) =>
    /^-\d/.test(argv[argv.length - 1] ?? '') && argv[argv.length - 2] !== '--' ? [...argv.slice(0, -1), '--', argv[argv.length - 1]] : argv,
  async run(args, io) {
    const [filename, sizeText] = expectPositionals(args, 2, 2, 'an image file and a size');
    const sign = sizeText[0] === '+' ? 1 : sizeText[0] === '-' ? -1 : 0;
    const prealloc = str(args, 'preallocation');
    if (prealloc !== undefined && !(RESIZE_PREALLOCATION_MODES as readonly string[]).includes(prealloc)) {
      throw new BlockError('InvalidArgument', `invalid preallocation '${prealloc}' (allowed values: ${RESIZE_PREALLOCATION_MODES.join(', ')})`);
    }
    await resize({
      filename,
      format: str(args, 'format'),
      allowExternalFiles: flag(args, 'allow-external-files'),
      size: (sign || 1) * parseSize(sign ? sizeText.slice(1) : sizeText),
      relative: sign !== 0,
      shrink: flag(args, 'shrink'),
      preallocation: prealloc as ResizePreallocation | undefined,
    });
    if (!flag(args, 'quiet')) io.stdout.write('Image resized.\n');
    return 0;
  },
};
