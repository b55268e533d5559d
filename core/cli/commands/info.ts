import { expectPositionals, flag, outputFormat, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, type Command } from '../command.js';
import { info, type ImageInfo } from '../../ops/info.js';
import { formatSize } from '../../options/size.js';
import { snapshotJson, snapshotTable } from '../snapshot-list.js';

export const infoCommand: Command = {
  name: 'info',
  summary: 'show what an image is: format, sizes, details',
  usage: '[-f FMT] [--output=human|json] [--backing-chain] [--allow-external-files] FILE',
  options: { ...FORMAT_OPTION, ...OPEN_OPTIONS, output: { type: 'string' }, 'backing-chain': { type: 'boolean' } },
  async run(args, io) {
    const out = outputFormat(args);
    const [filename] = expectPositionals(args, 1, 1, 'one image file');
    const chain = flag(args, 'backing-chain');
    const result = await info({
      filename,
      format: str(args, 'format'),
      backingChain: chain,
      allowExternalFiles: flag(args, 'allow-external-files'),
    });
    if (out === 'json') {
      const json = result.map((i) => (i.snapshots ? { ...i, snapshots: i.snapshots.map(snapshotJson) } : i));
      io.stdout.write(qemuJson(chain ? json : json[0]) + '\n');
    } else {
      io.stdout.write(result.map(humanInfo).join('\n'));
    }
    return 0;
  },
};

/** qemu-img's human layout; format-specific keys lose their dashes. */
function humanInfo(i: ImageInfo): string {
  const lines = [
    `image: ${i.filename}`,
    `file format: ${i.format}`,
    `virtual size: ${formatSize(i['virtual-size'])} (${i['virtual-size']} bytes)`,
    `disk size: ${i['actual-size'] === undefined ? 'unavailable' : formatSize(i['actual-size'])}`,
  ];
  if (i['cluster-size'] !== undefined) lines.push(`cluster_size: ${i['cluster-size']}`);
  if (i['backing-filename'] !== undefined) {
    const full = i['full-backing-filename'];
    lines.push(`backing file: ${i['backing-filename']}${full && full !== i['backing-filename'] ? ` (actual path: ${full})` : ''}`);
  }
  if (i['backing-filename-format'] !== undefined) lines.push(`backing file format: ${i['backing-filename-format']}`);
  if (i.snapshots) lines.push(snapshotTable(i.snapshots).trimEnd());
  const specific = i['format-specific'];
  if (specific && Object.keys(specific.data).length > 0) {
    lines.push('Format specific information:');
    dumpObject(specific.data, 1, lines);
  }
  return lines.join('\n') + '\n';
}

const isComposite = (v: unknown) => typeof v === 'object' && v !== null;

/** qemu-img's nested layout: four spaces a level, keys without dashes, list items as [i]. */
function dumpObject(v: unknown, level: number, lines: string[]): void {
  const pad = ' '.repeat(level * 4);
  const item = (label: string, x: unknown) => {
    if (isComposite(x)) {
      lines.push(`${pad}${label}:`);
      dumpObject(x, level + 1, lines);
    } else lines.push(`${pad}${label}: ${x}`);
  };
  if (Array.isArray(v)) v.forEach((x, n) => item(`[${n}]`, x));
  else for (const [k, x] of Object.entries(v as object)) item(k.replace(/-/g, ' '), x);
}

/** JSON as qemu-img prints it: four-space indents, and an empty list still spans two lines. */
function qemuJson(v: unknown): string {
  // Only a list can end a line with "[]": strings are quoted.
  return JSON.stringify(v, null, 4).replace(/^( *)(.*)\[\](,?)$/gm, '$1$2[\n$1]$3');
}
