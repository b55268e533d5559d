/**
 * `platter`: qemu-img's commands and syntax over Platter's engine. Errors
 * reach the user as one line, `platter: FILE: what is wrong`; set
 * PLATTER_DEBUG=1 to see stack traces.
 */
import { statSync } from 'node:fs';
import { BlockError, toBlockError } from '../image/errors.js';
import { startCopyThreadsAhead } from '../ops/copy-workers.js';
import { parse } from './args.js';
import type { CliIO, Command } from './command.js';
import { amendCommand } from './commands/amend.js';
import { checkCommand } from './commands/check.js';
import { commitCommand } from './commands/commit.js';
import { compactCommand } from './commands/compact.js';
import { compareCommand } from './commands/compare.js';
import { convertCommand } from './commands/convert.js';
import { createCommand } from './commands/create.js';
import { ddCommand } from './commands/dd.js';
import { hashCommand } from './commands/hash.js';
import { infoCommand } from './commands/info.js';
import { mapCommand } from './commands/map.js';
import { measureCommand } from './commands/measure.js';
import { rebaseCommand } from './commands/rebase.js';
import { resizeCommand } from './commands/resize.js';
import { snapshotCommand } from './commands/snapshot.js';
import { formatsHelp } from './formats-help.js';

export const COMMANDS: readonly Command[] = [
  infoCommand,
  createCommand,
  convertCommand,
  compareCommand,
  checkCommand,
  mapCommand,
  measureCommand,
  ddCommand,
  resizeCommand,
  compactCommand,
  amendCommand,
  snapshotCommand,
  rebaseCommand,
  commitCommand,
  hashCommand,
];

/** Exit status after Ctrl-C, as shells report death by SIGINT. */
export const EXIT_CANCELLED = 130;

declare const PLATTER_VERSION: string | undefined;
const VERSION = typeof PLATTER_VERSION === 'string' ? PLATTER_VERSION : 'dev';

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  return [
    'usage: platter COMMAND [options]',
    '',
    'Create, inspect, convert and compare disk images. Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    '',
    '`platter COMMAND --help` shows a command\'s options.',
    '',
    formatsHelp(),
  ].join('\n');
}

function commandHelp(c: Command): string {
  return `usage: platter ${c.name} ${c.usage}\n\n${c.summary}\n`;
}

/**
 * Starts what command `argv` will need before it runs: a convert's copy
 * threads (startCopyThreadsAhead), whose start then overlaps the images'
 * opening. `loaded` runs once they have loaded, at once when there are
 * none: bin/platter.cjs sets the CLI's V8 flags then.
 */
export function startAhead(argv: string[], loaded: () => void): void {
  const [name, ...rest] = argv;
  const command = COMMANDS.find((c) => c.name === name);
  let bytes = 0;
  try {
    const sources = command?.copySources?.(parse(command.preprocess?.(rest) ?? rest, command.options)) ?? [];
    for (const file of sources) bytes += statSync(file).size;
  } catch {
    // run() says what is wrong with the command line or the files; nothing starts ahead.
    bytes = 0;
  }
  void startCopyThreadsAhead(bytes, loaded);
}

/** One line for the user: "platter: FILE: what is wrong". */
export function formatError(err: BlockError): string {
  const where = err.context.path ? `${err.context.path}: ` : '';
  return `platter: ${where}${err.message}\n`;
}

export async function run(argv: string[], io?: Partial<CliIO>): Promise<number> {
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  const full: CliIO = {
    stdout: io?.stdout ?? process.stdout,
    stderr: io?.stderr ?? process.stderr,
    signal: io?.signal ?? controller.signal,
  };
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    const c = COMMANDS.find((x) => x.name === rest[0]);
    full.stdout.write(c ? commandHelp(c) : mainHelp());
    return 0;
  }
  if (name === '--version' || name === '-V') {
    full.stdout.write(`platter ${VERSION}\n`);
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    full.stderr.write(`platter: unknown command '${name}' (see platter --help)\n`);
    return 1;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    full.stdout.write(commandHelp(command));
    return 0;
  }
  if (!io?.signal) process.on('SIGINT', onSigint);
  try {
    const argv = command.preprocess ? command.preprocess(rest) : rest;
    return await command.run(parse(argv, command.options), full);
  } catch (err) {
    const e = toBlockError(err);
    if (e.kind === 'Cancelled') {
      full.stderr.write('platter: cancelled\n');
      return EXIT_CANCELLED;
    }
    full.stderr.write(formatError(e));
    if (process.env.PLATTER_DEBUG === '1') full.stderr.write(`${(err as Error).stack ?? err}\n`);
    return command.errorExitCode ?? 1;
  } finally {
    process.off('SIGINT', onSigint);
  }
}
