import { asksOptionsHelp, expectPositionals, flag, optionList, str, withBackingArgs } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, QUIET_OPTION, type Command } from '../command.js';
import { create } from '../../ops/create.js';
import { createOptionsOf, findDriver } from '../../image/registry.js';
import { formatOptionsHelp } from '../../options/schema.js';
import { parseSize } from '../../options/size.js';

export const createCommand: Command = {
  name: 'create',
  summary: 'create a new, empty image (-o help lists the options of a format)',
  usage: '[-q] [-f FMT] [-b BACKING_FILE -F BACKING_FMT] [-u] [-o OPTIONS] FILE [SIZE]',
  options: {
    ...FORMAT_OPTION,
    ...QUIET_OPTION,
    ...OPEN_OPTIONS,
    options: { type: 'string', short: 'o', multiple: true },
    backing: { type: 'string', short: 'b' },
    'backing-format': { type: 'string', short: 'F' },
    unsafe: { type: 'boolean', short: 'u' },
  },
  async run(args, io) {
    const format = str(args, 'format') ?? 'raw';
    const options = withBackingArgs(args, optionList(args));
    if (asksOptionsHelp(options)) {
      io.stdout.write(formatOptionsHelp(createOptionsOf(findDriver(format))));
      return 0;
    }
    const [filename, sizeText] = expectPositionals(args, 1, 2, 'a file name and a size');
    const size = sizeText === undefined ? undefined : parseSize(sizeText);
    const result = await create({
      filename,
      format,
      size,
      options,
      unsafe: flag(args, 'unsafe'),
      allowExternalFiles: flag(args, 'allow-external-files'),
    });
    if (!flag(args, 'quiet')) {
      const given = Object.entries(options)
        .filter(([k]) => k !== 'size')
        .map(([k, v]) => ` ${k}=${v}`)
        .join('');
      io.stdout.write(`Formatting '${filename}', fmt=${format} size=${result.size}${given}\n`);
    }
    return 0;
  },
};
