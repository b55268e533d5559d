/** Command-line parsing in qemu-img's style, on top of node:util's parseArgs. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { SnapshotKey } from '../image/driver.js';
import { BlockError } from '../image/errors.js';
import { CACHE_MODES, type CacheMode } from '../io/protocol.js';
import { parseOptionList } from '../options/schema.js';
import { parseSize } from '../options/size.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

export function parse(argv: string[], options: OptionSpec): Parsed {
  try {
    const { values, positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
    return { values: values as Parsed['values'], positionals };
  } catch (err) {
    // parseArgs' messages are long and mention internals; keep the gist.
    const msg = (err as Error).message.split('\n')[0].replace(/\. To specify a positional.*$/, '');
    throw new BlockError('InvalidArgument', msg.charAt(0).toLowerCase() + msg.slice(1));
  }
}

export function str(p: Parsed, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === 'string' ? v : undefined;
}

export function flag(p: Parsed, name: string): boolean {
  return p.values[name] === true;
}

/** Repeated `-o` flags merge, later keys winning (as qemu-img). */
export function optionList(p: Parsed, name = 'options'): Record<string, string> {
  const v = p.values[name];
  const list = Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
  return Object.assign({}, ...list.map(parseOptionList));
}

/** -b/-B FILE and -F FMT name a new image's backing file; as in qemu-img, they win over -o backing_file/backing_fmt. */
export function withBackingArgs(p: Parsed, options: Record<string, string>): Record<string, string> {
  const file = str(p, 'backing');
  const format = str(p, 'backing-format');
  if (file !== undefined) options.backing_file = file;
  if (format !== undefined) options.backing_fmt = format;
  return options;
}

export function sizeArg(p: Parsed, name: string, what: string): number | undefined {
  const v = str(p, name);
  return v === undefined ? undefined : parseSize(v, what);
}

export function intArg(p: Parsed, name: string, what: string): number | undefined {
  const v = str(p, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new BlockError('InvalidArgument', `invalid ${what} '${v}'`);
  return n;
}

export const OUTPUT_FORMATS = ['human', 'json'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export function outputFormat(p: Parsed): OutputFormat {
  const v = str(p, 'output') ?? 'human';
  if (!(OUTPUT_FORMATS as readonly string[]).includes(v)) {
    throw new BlockError('InvalidArgument', `--output must be human or json, not '${v}'`);
  }
  return v as OutputFormat;
}

export function expectPositionals(p: Parsed, min: number, max: number, usage: string): string[] {
  if (p.positionals.length < min || p.positionals.length > max) {
    throw new BlockError('InvalidArgument', `expected ${usage}`);
  }
  return p.positionals;
}

/** A cache mode flag (-t, -T): writeback (the default) or unsafe. */
export function cacheArg(p: Parsed, name: string): CacheMode {
  const v = str(p, name) ?? 'writeback';
  if (!(CACHE_MODES as readonly string[]).includes(v)) {
    throw new BlockError('InvalidArgument', `invalid cache mode '${v}' (allowed values: ${CACHE_MODES.join(', ')})`);
  }
  return v as CacheMode;
}

/** `-o help` (or `-o ?`): list the options instead of running, as qemu-img does. */
export function asksOptionsHelp(options: Record<string, string>): boolean {
  return 'help' in options || '?' in options;
}

/** Checks -T (see SOURCE_CACHE_OPTION). */
export function sourceCacheArg(p: Parsed): void {
  cacheArg(p, 'source-cache');
}

/** -l: a snapshot's ID or name, or qemu-img's "snapshot.id=ID", "snapshot.name=NAME" or both (then both must match). */
export function snapshotArg(p: Parsed): SnapshotKey | undefined {
  const text = str(p, 'snapshot');
  if (text === undefined || !text.includes('=')) return text;
  const { 'snapshot.id': id, 'snapshot.name': name, ...rest } = parseOptionList(text);
  if ((id === undefined && name === undefined) || Object.keys(rest).length) {
    throw new BlockError('InvalidArgument', `invalid snapshot parameter '${text}' (use snapshot.id=ID, snapshot.name=NAME or both)`);
  }
  return { id, name };
}
