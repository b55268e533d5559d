import { expectPositionals, flag, optionList, str } from '../args.js';
import { FORMAT_OPTION, QUIET_OPTION, type Command } from '../command.js';
import { create } from '../../ops/create.js';
import { findDriver } from '../../image/registry.js';
import { formatOptionsHelp } from '../../options/schema.js';
import { parseSize } from '../../options/size.js';

export const createCommand: Command = {
  name: 'create',
  summary: 'create a new, empty image (-o help lists the options of a format)',
  usage: '[-q] [-f FMT] [-o OPTIONS] FILE [SIZE]',
  options: { ...FORMAT_OPTION, ...QUIET_OPTION, options: { type: 'string', short: 'o', multiple: true } },
  async run(args, io) {
    const format = str(args, 'format') ?? 'raw';
    const options = optionList(args);
    if ('help' in options || '?' in options) {
      io.stdout.write(formatOptionsHelp(findDriver(format).createOptions ?? []));
      return 0;
    }
    const [filename, sizeText] = expectPositionals(args, 1, 2, 'a file name and a size');
    const size = sizeText === undefined ? undefined : parseSize(sizeText);
    const result = await create({ filename, format, size, options });
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
