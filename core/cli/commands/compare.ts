import { compare } from '../../ops/compare.js';
import { expectPositionals, flag, sourceCacheArg, str } from '../args.js';
import { QUIET_OPTION, OPEN_OPTIONS, SOURCE_CACHE_OPTION, type Command } from '../command.js';
import { progressFromArgs, PROGRESS_FLAGS } from '../progress-args.js';

/** Exit codes as qemu-img compare: 0 identical, 1 different, 2 error. */
export const compareCommand: Command = {
  name: 'compare',
  summary: 'check whether two images hold the same data (exit 0 same, 1 different, 2 error)',
  usage: '[-q] [-p] [-s] [-f FMT] [-F FMT] [-T SRC_CACHE] FILE1 FILE2',
  errorExitCode: 2,
  options: {
    ...OPEN_OPTIONS,
    ...QUIET_OPTION,
    ...SOURCE_CACHE_OPTION,
    ...PROGRESS_FLAGS,
    format: { type: 'string', short: 'f' },
    'format-b': { type: 'string', short: 'F' },
    strict: { type: 'boolean', short: 's' },
  },
  async run(args, io) {
    const [a, b] = expectPositionals(args, 2, 2, 'two image files');
    sourceCacheArg(args);
    const r = await compare(
      { a, b, formatA: str(args, 'format'), formatB: str(args, 'format-b'), strict: flag(args, 'strict') , allowExternalFiles: flag(args, 'allow-external-files') },
      { signal: io.signal, onProgress: progressFromArgs(args, io) },
    );
    const say = (line: string) => {
      if (!flag(args, 'quiet')) io.stdout.write(line + '\n');
    };
    if ((r.identical || r.reason === 'content') && r.sizeMismatch) say('Warning: Image size mismatch!');
    if (r.identical) {
      say('Images are identical.');
      return 0;
    }
    if (r.reason === 'size') say('Strict mode: Image size mismatch!');
    else if (r.reason === 'allocation') say(`Strict mode: Offset ${r.offset} block status mismatch!`);
    else say(`Content mismatch at offset ${r.offset}!`);
    return 1;
  },
};
