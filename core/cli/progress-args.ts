/** The -p / --progress=json flags, shared by the commands that take long. */
import { BlockError } from '../image/errors.js';
import type { Progress } from '../ops/job.js';
import { flag, str, type OptionSpec, type Parsed } from './args.js';
import type { CliIO } from './command.js';
import { progressReporter } from './progress.js';

export const PROGRESS_FLAGS: OptionSpec = {
  progress: { type: 'string' },
  p: { type: 'boolean', short: 'p' },
};

export function progressFromArgs(args: Parsed, io: CliIO): ((p: Progress) => void) | undefined {
  const mode = str(args, 'progress');
  if (mode !== undefined && mode !== 'json' && mode !== 'bar') {
    throw new BlockError('InvalidArgument', `--progress must be bar or json, not '${mode}'`);
  }
  if (flag(args, 'quiet')) return undefined;
  if (mode === 'json') return progressReporter('json', io.stdout);
  if (mode === 'bar' || flag(args, 'p')) return progressReporter('bar', io.stdout);
  return undefined;
}
