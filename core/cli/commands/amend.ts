import { BlockError } from '../../image/errors.js';
import { openImage } from '../../image/open.js';
import { findDriver } from '../../image/registry.js';
import { amend } from '../../ops/amend.js';
import { formatOptionsHelp } from '../../options/schema.js';
import { asksOptionsHelp, expectPositionals, flag, optionList, str, type Parsed } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, QUIET_OPTION, type Command } from '../command.js';
import { progressFromArgs, PROGRESS_FLAGS } from '../progress-args.js';

export const amendCommand: Command = {
  name: 'amend',
  summary: 'change the format options of an existing image (-o help lists them)',
  usage: '[-f FMT] [-p] [-q] [--force] -o OPTIONS FILE',
  options: {
    ...FORMAT_OPTION,
    ...QUIET_OPTION,
    ...OPEN_OPTIONS,
    ...PROGRESS_FLAGS,
    options: { type: 'string', short: 'o', multiple: true },
    // qemu-img's --force allows risky encryption changes; no option Platter amends needs it.
    force: { type: 'boolean' },
  },
  async run(args, io) {
    if (args.values.options === undefined) throw new BlockError('InvalidArgument', 'must specify options (-o)');
    const options = optionList(args);
    if (asksOptionsHelp(options)) {
      io.stdout.write(await amendHelp(args));
      return 0;
    }
    const [filename] = expectPositionals(args, 1, 1, 'one image file name');
    await amend(
      { filename, format: str(args, 'format'), options, allowExternalFiles: flag(args, 'allow-external-files') },
      { signal: io.signal, onProgress: progressFromArgs(args, io) },
    );
    return 0;
  },
};

/** `-o help`: the format's amend options; without -f the image's format is probed, as qemu-img does. */
async function amendHelp(args: Parsed): Promise<string> {
  let format = str(args, 'format');
  if (format === undefined) {
    const [filename] = expectPositionals(args, 1, 1, 'one image file name');
    const image = await openImage(filename, { noBacking: true, allowExternalFiles: flag(args, 'allow-external-files') });
    format = image.format;
    await image.close();
  }
  const decls = findDriver(format).amendOptions;
  if (!decls) throw new BlockError('Unsupported', `format driver '${format}' does not support option amendment`);
  return formatOptionsHelp(decls, `Amend options for '${format}':`);
}
