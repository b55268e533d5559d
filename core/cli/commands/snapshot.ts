import { BlockError } from '../../image/errors.js';
import { snapshot, type SnapshotAction } from '../../ops/snapshot.js';
import { expectPositionals, flag, str } from '../args.js';
import { FORMAT_OPTION, QUIET_OPTION, type Command } from '../command.js';
import { snapshotTable } from '../snapshot-list.js';

export const snapshotCommand: Command = {
  name: 'snapshot',
  summary: 'list, create, apply or delete internal snapshots (qcow2)',
  usage: '[-q] [-f FMT] [-l | -c NAME | -a NAME | -d NAME] FILE',
  options: {
    ...FORMAT_OPTION,
    ...QUIET_OPTION,
    list: { type: 'boolean', short: 'l' },
    create: { type: 'string', short: 'c' },
    apply: { type: 'string', short: 'a' },
    delete: { type: 'string', short: 'd' },
  },
  async run(args, io) {
    const [filename] = expectPositionals(args, 1, 1, 'one image file');
    const actions: SnapshotAction[] = [];
    if (flag(args, 'list')) actions.push({ op: 'list' });
    for (const op of ['create', 'apply', 'delete'] as const) {
      const name = str(args, op);
      if (name !== undefined) actions.push({ op, name });
    }
    if (actions.length > 1) throw new BlockError('InvalidArgument', 'give only one of -l, -c, -a and -d');
    const action = actions[0] ?? { op: 'list' };
    const list = await snapshot({ filename, format: str(args, 'format'), action });
    if (action.op === 'list' && !flag(args, 'quiet')) io.stdout.write(snapshotTable(list));
    return 0;
  },
};
