import { BlockError } from '../../image/errors.js';
import { measure } from '../../ops/measure.js';
import { flag, optionList, outputFormat, sizeArg, snapshotArg, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, type Command } from '../command.js';

export const measureCommand: Command = {
  name: 'measure',
  summary: 'say how much room a new image of some format needs',
  usage: '[--output=human|json] -O OUTPUT_FMT [-o OPTIONS] (--size N | [-f FMT] [-l SNAPSHOT] FILE)',
  options: {
    ...OPEN_OPTIONS,
    ...FORMAT_OPTION,
    output: { type: 'string' },
    'output-format': { type: 'string', short: 'O' },
    options: { type: 'string', short: 'o', multiple: true },
    size: { type: 'string' },
    snapshot: { type: 'string', short: 'l' },
  },
  async run(args, io) {
    const out = outputFormat(args);
    if (args.positionals.length > 1) throw new BlockError('InvalidArgument', 'expected at most one image file');
    const r = await measure({
      targetFormat: str(args, 'output-format') ?? 'raw',
      options: optionList(args),
      size: sizeArg(args, 'size', 'size'),
      filename: args.positionals[0],
      format: str(args, 'format'),
      snapshot: snapshotArg(args),
      allowExternalFiles: flag(args, 'allow-external-files'),
    });
    io.stdout.write(
      out === 'json'
        ? JSON.stringify(r, null, 4) + '\n'
        : `required size: ${r.required}\nfully allocated size: ${r['fully-allocated']}\n` +
            (r.bitmaps === undefined ? '' : `bitmaps size: ${r.bitmaps}\n`),
    );
    return 0;
  },
};
