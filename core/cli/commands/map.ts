import { map, type MapEntry } from '../../ops/map.js';
import { expectPositionals, flag, outputFormat, sizeArg, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, type Command } from '../command.js';
import { BlockError } from '../../image/errors.js';

export const mapCommand: Command = {
  name: 'map',
  summary: 'show which ranges hold data, zeros or nothing, and where they are stored',
  usage: '[-f FMT] [--start-offset=OFFSET] [--max-length=LEN] [--output=human|json] FILE',
  options: {
    ...OPEN_OPTIONS,
    ...FORMAT_OPTION,
    output: { type: 'string' },
    'start-offset': { type: 'string' },
    'max-length': { type: 'string' },
  },
  async run(args, io) {
    const out = outputFormat(args);
    const [filename] = expectPositionals(args, 1, 1, 'one image file');
    const entries = await map(
      {
        filename,
        format: str(args, 'format'),
        allowExternalFiles: flag(args, 'allow-external-files'),
        startOffset: sizeArg(args, 'start-offset', 'start offset'),
        maxLength: sizeArg(args, 'max-length', 'maximum length'),
      },
      { signal: io.signal },
    );
    if (out === 'json') io.stdout.write(jsonMap(entries));
    else humanMap(entries, (line) => io.stdout.write(line));
    return 0;
  },
};

/** qemu-img's exact layout: one entry per line, keys in its order. */
function jsonMap(entries: MapEntry[]): string {
  const lines = entries.map((e) => {
    const offset = e.offset !== undefined ? `, "offset": ${e.offset}` : '';
    return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}${offset}}`;
  });
  return `[${lines.join(',\n')}]\n`;
}

const hex = (n: number) => (n === 0 ? '0' : `0x${n.toString(16)}`);

/**
 * Only stored data is listed, with where it lives in which file. Data with
 * no plain offset ends the list with an error, the lines before it printed,
 * as qemu-img does.
 */
function humanMap(entries: MapEntry[], print: (line: string) => void): void {
  print(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
  for (const e of entries) {
    if (!e.data || e.zero) continue;
    if (e.offset === undefined) {
      throw new BlockError('Unsupported', 'the image holds compressed or encrypted data, which has no plain offset; use --output=json', {
        path: e.filename,
      });
    }
    print(`${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.offset).padEnd(16)}${e.filename}\n`);
  }
}
