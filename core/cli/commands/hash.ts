import { BlockError } from '../../image/errors.js';
import { hash, HASH_ALGORITHMS, type HashAlgorithm } from '../../ops/hash.js';
import { flag, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, type Command } from '../command.js';
import { progressFromArgs, PROGRESS_FLAGS } from '../progress-args.js';

export const hashCommand: Command = {
  name: 'hash',
  summary: 'print a digest of the guest-visible data (same data, same digest, any format)',
  usage: '[-f FMT] [-a sha256|sha512|sha1|md5] [--progress=json] FILE [FILE ...]',
  options: { ...FORMAT_OPTION, ...OPEN_OPTIONS, ...PROGRESS_FLAGS, algorithm: { type: 'string', short: 'a' } },
  async run(args, io) {
    if (args.positionals.length === 0) throw new BlockError('InvalidArgument', 'expected one or more image files');
    const algorithm = str(args, 'algorithm') ?? 'sha256';
    if (!(HASH_ALGORITHMS as readonly string[]).includes(algorithm)) {
      throw new BlockError('InvalidArgument', `unknown algorithm '${algorithm}' (known: ${HASH_ALGORITHMS.join(', ')})`);
    }
    for (const filename of args.positionals) {
      const digest = await hash(
        { filename, format: str(args, 'format'), algorithm: algorithm as HashAlgorithm , allowExternalFiles: flag(args, 'allow-external-files') },
        { signal: io.signal, onProgress: progressFromArgs(args, { ...io, stdout: io.stderr }) },
      );
      // sha256sum's layout, so existing tools can check it.
      io.stdout.write(`${digest}  ${filename}\n`);
    }
    return 0;
  },
};
