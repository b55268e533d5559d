import { BlockError } from '../../image/errors.js';
import { rebase } from '../../ops/rebase.js';
import { cacheArg, expectPositionals, flag, sourceCacheArg, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, QUIET_OPTION, SOURCE_CACHE_OPTION, type Command } from '../command.js';
import { progressFromArgs, PROGRESS_FLAGS } from '../progress-args.js';

export const rebaseCommand: Command = {
  name: 'rebase',
  summary: 'make an image use another backing file, keeping its content (-u: only rename it in the header)',
  usage: '[-q] [-p] [--progress=json] [-f FMT] [-t CACHE] [-T SRC_CACHE] [-u] -b BACKING_FILE [-F BACKING_FMT] FILE',
  options: {
    ...FORMAT_OPTION,
    ...OPEN_OPTIONS,
    ...QUIET_OPTION,
    ...PROGRESS_FLAGS,
    backing: { type: 'string', short: 'b' },
    'backing-format': { type: 'string', short: 'F' },
    unsafe: { type: 'boolean', short: 'u' },
    cache: { type: 'string', short: 't' },
    ...SOURCE_CACHE_OPTION,
  },
  async run(args, io) {
    const [filename] = expectPositionals(args, 1, 1, 'one image file');
    const backing = str(args, 'backing');
    const unsafe = flag(args, 'unsafe');
    if (backing === undefined && !unsafe) {
      throw new BlockError('InvalidArgument', 'give the new backing file (-b FILE, or -b "" for none) or use unsafe mode (-u)');
    }
    sourceCacheArg(args);
    await rebase(
      {
        filename,
        format: str(args, 'format'),
        backing,
        backingFormat: str(args, 'backing-format'),
        unsafe,
        cache: cacheArg(args, 'cache'),
        allowExternalFiles: flag(args, 'allow-external-files'),
      },
      { signal: io.signal, onProgress: progressFromArgs(args, io) },
    );
    return 0;
  },
};
