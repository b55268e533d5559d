import { BlockError } from '../../image/errors.js';
import { convert } from '../../ops/convert.js';
import { createOptionsOf, findDriver } from '../../image/registry.js';
import { formatOptionsHelp } from '../../options/schema.js';
import { asksOptionsHelp, cacheArg, flag, intArg, optionList, sizeArg, snapshotArg, sourceCacheArg, str, withBackingArgs } from '../args.js';
import { FORMAT_OPTION, QUIET_OPTION, OPEN_OPTIONS, SOURCE_CACHE_OPTION, type Command } from '../command.js';
import { progressFromArgs, PROGRESS_FLAGS } from '../progress-args.js';

export const convertCommand: Command = {
  name: 'convert',
  summary: 'copy one or more images (concatenated) into a new image of any format',
  copySources: (args) => args.positionals.slice(0, -1),
  usage:
    '[-p] [--progress=json] [-q] [-n] [-c] [-l SNAPSHOT] [--target-is-zero] [-f FMT] [-O OUTPUT_FMT] [-B BACKING_FILE -F BACKING_FMT] [-o OPTIONS] [-S SPARSE_SIZE] [-m NUM] [-W] [-r RATE_LIMIT] [-t writeback|unsafe] [-T SRC_CACHE] FILE [FILE2 ...] OUTPUT',
  options: {
    ...OPEN_OPTIONS,
    ...FORMAT_OPTION,
    ...QUIET_OPTION,
    ...PROGRESS_FLAGS,
    'output-format': { type: 'string', short: 'O' },
    options: { type: 'string', short: 'o', multiple: true },
    // The output's backing file: only what the sources' own layers hold is copied.
    backing: { type: 'string', short: 'B' },
    'backing-format': { type: 'string', short: 'F' },
    'no-create': { type: 'boolean', short: 'n' },
    sparse: { type: 'string', short: 'S' },
    parallel: { type: 'string', short: 'm' },
    'out-of-order': { type: 'boolean', short: 'W' },
    'target-is-zero': { type: 'boolean' },
    'rate-limit': { type: 'string', short: 'r' },
    cache: { type: 'string', short: 't' },
    ...SOURCE_CACHE_OPTION,
    compress: { type: 'boolean', short: 'c' },
    snapshot: { type: 'string', short: 'l' },
  },
  async run(args, io) {
    const targetFormat = str(args, 'output-format') ?? 'raw';
    if (asksOptionsHelp(optionList(args))) {
      io.stdout.write(formatOptionsHelp(createOptionsOf(findDriver(targetFormat))));
      return 0;
    }
    if (args.positionals.length < 2) throw new BlockError('InvalidArgument', 'expected one or more source images and an output file');
    const sources = args.positionals.slice(0, -1);
    const target = args.positionals[args.positionals.length - 1];
    const noCreate = flag(args, 'no-create');
    const cache = cacheArg(args, 'cache');
    sourceCacheArg(args);
    if (flag(args, 'target-is-zero') && !noCreate) {
      throw new BlockError('InvalidArgument', '--target-is-zero only applies to an existing target (-n)');
    }
    await convert(
      {
        sources,
        sourceFormat: str(args, 'format'),
        target,
        targetFormat,
        options: withBackingArgs(args, optionList(args)),
        noCreate,
        cache,
        targetIsZero: flag(args, 'target-is-zero') || undefined,
        sparseSize: sizeArg(args, 'sparse', 'sparse size'),
        parallel: intArg(args, 'parallel', 'number of parallel requests'),
        outOfOrder: flag(args, 'out-of-order'),
        allowExternalFiles: flag(args, 'allow-external-files'),
        rateLimit: sizeArg(args, 'rate-limit', 'rate limit'),
        compress: flag(args, 'compress'),
        snapshot: snapshotArg(args),
      },
      { signal: io.signal, onProgress: progressFromArgs(args, io) },
    );
    return 0;
  },
};
