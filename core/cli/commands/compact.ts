import { compact } from '../../ops/compact.js';
import { expectPositionals, flag, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, QUIET_OPTION, type Command } from '../command.js';
import { progressFromArgs, PROGRESS_FLAGS } from '../progress-args.js';

export const compactCommand: Command = {
  name: 'compact',
  summary: 'drop stored blocks that read as zeros and shrink the file (vdi)',
  usage: '[-q] [-p] [--progress=json] [-f FMT] FILE',
  options: { ...FORMAT_OPTION, ...OPEN_OPTIONS, ...QUIET_OPTION, ...PROGRESS_FLAGS },
  async run(args, io) {
    const [filename] = expectPositionals(args, 1, 1, 'one image file');
    const r = await compact(
      { filename, format: str(args, 'format'), allowExternalFiles: flag(args, 'allow-external-files') },
      { signal: io.signal, onProgress: progressFromArgs(args, io) },
    );
    if (!flag(args, 'quiet')) io.stdout.write(`Image compacted: ${r.before} -> ${r.after} bytes.\n`);
    return 0;
  },
};
