import { commit } from '../../ops/commit.js';
import { cacheArg, expectPositionals, flag, sizeArg, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, QUIET_OPTION, type Command } from '../command.js';
import { progressFromArgs, PROGRESS_FLAGS } from '../progress-args.js';

export const commitCommand: Command = {
  name: 'commit',
  summary: 'write an image\'s data into its backing file (then empty it, unless -d or -b)',
  usage: '[-q] [-p] [--progress=json] [-f FMT] [-t CACHE] [-b BASE] [-r RATE_LIMIT] [-d] FILE',
  options: {
    ...FORMAT_OPTION,
    ...OPEN_OPTIONS,
    ...QUIET_OPTION,
    ...PROGRESS_FLAGS,
    base: { type: 'string', short: 'b' },
    'keep-top': { type: 'boolean', short: 'd' },
    'rate-limit': { type: 'string', short: 'r' },
    cache: { type: 'string', short: 't' },
  },
  async run(args, io) {
    const [filename] = expectPositionals(args, 1, 1, 'one image file');
    await commit(
      {
        filename,
        format: str(args, 'format'),
        base: str(args, 'base'),
        keepTop: flag(args, 'keep-top'),
        cache: cacheArg(args, 'cache'),
        rateLimit: sizeArg(args, 'rate-limit', 'rate limit'),
        allowExternalFiles: flag(args, 'allow-external-files'),
      },
      { signal: io.signal, onProgress: progressFromArgs(args, io) },
    );
    if (!flag(args, 'quiet')) io.stdout.write('Image committed.\n');
    return 0;
  },
};
