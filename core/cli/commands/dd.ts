import { BlockError } from '../../image/errors.js';
import { dd } from '../../ops/dd.js';
import { parseSize } from '../../options/size.js';
import { flag, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, type Command } from '../command.js';
import { progressFromArgs, PROGRESS_FLAGS } from '../progress-args.js';

const OPERANDS = ['if', 'of', 'bs', 'count', 'skip'] as const;

export const ddCommand: Command = {
  name: 'dd',
  summary: 'copy a range of blocks of an image into a new image',
  usage: '[-f FMT] [-O OUTPUT_FMT] [-p] [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT',
  options: { ...FORMAT_OPTION, ...OPEN_OPTIONS, ...PROGRESS_FLAGS, 'output-format': { type: 'string', short: 'O' } },
  async run(args, io) {
    const ops: Partial<Record<(typeof OPERANDS)[number], string>> = {};
    for (const p of args.positionals) {
      const eq = p.indexOf('=');
      const key = p.slice(0, eq) as (typeof OPERANDS)[number];
      if (eq < 0 || !OPERANDS.includes(key)) {
        throw new BlockError('InvalidArgument', `unknown operand '${p}' (use ${OPERANDS.map((o) => o + '=').join(', ')})`);
      }
      ops[key] = p.slice(eq + 1);
    }
    if (!ops.if || !ops.of) throw new BlockError('InvalidArgument', 'both if=INPUT and of=OUTPUT must be given');
    const blocks = (v: string | undefined, what: string) => {
      if (v === undefined) return undefined;
      if (!/^\d+$/.test(v)) throw new BlockError('InvalidArgument', `invalid ${what} '${v}'`);
      return Number(v);
    };
    await dd(
      {
        input: ops.if,
        output: ops.of,
        format: str(args, 'format'),
        allowExternalFiles: flag(args, 'allow-external-files'),
        targetFormat: str(args, 'output-format'),
        blockSize: ops.bs === undefined ? undefined : parseSize(ops.bs, 'block size'),
        count: blocks(ops.count, 'count'),
        skip: blocks(ops.skip, 'skip'),
      },
      { signal: io.signal, onProgress: progressFromArgs(args, io) },
    );
    return 0;
  },
};
