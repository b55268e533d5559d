import { expectPositionals, outputFormat, str } from '../args.js';
import { FORMAT_OPTION, type Command } from '../command.js';
import { info, type ImageInfo } from '../../ops/info.js';
import { formatSize } from '../../options/size.js';

export const infoCommand: Command = {
  name: 'info',
  summary: 'show what an image is: format, sizes, details',
  usage: '[-f FMT] [--output=human|json] FILE',
  options: { ...FORMAT_OPTION, output: { type: 'string' } },
  async run(args, io) {
    const out = outputFormat(args);
    const [filename] = expectPositionals(args, 1, 1, 'one image file');
    const result = await info({ filename, format: str(args, 'format') });
    io.stdout.write(out === 'json' ? JSON.stringify(result, null, 4) + '\n' : humanInfo(result));
    return 0;
  },
};

function humanInfo(i: ImageInfo): string {
  const lines = [
    `image: ${i.filename}`,
    `file format: ${i.format}`,
    `virtual size: ${formatSize(i['virtual-size'])} (${i['virtual-size']} bytes)`,
    `disk size: ${i['actual-size'] === undefined ? 'unavailable' : formatSize(i['actual-size'])}`,
  ];
  if (i['cluster-size'] !== undefined) lines.push(`cluster_size: ${i['cluster-size']}`);
  return lines.join('\n') + '\n';
}
