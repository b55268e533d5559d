/** What a `platter` subcommand is: its help, its options and how it runs. */
import type { OptionSpec, Parsed } from './args.js';
import type { Writer } from './progress.js';

export interface CliIO {
  stdout: Writer;
  stderr: Writer;
  /** Fires on Ctrl-C. */
  signal: AbortSignal;
}

export interface Command {
  name: string;
  summary: string;
  /** The synopsis after `platter NAME`. */
  usage: string;
  options: OptionSpec;
  /** Exit code for errors (compare uses 2, as qemu-img). */
  errorExitCode?: number;
  /**
   * For a command that may copy on worker threads: the files it copies
   * from. Their size decides whether the threads start as the command
   * starts (startAhead in main.ts).
   */
  copySources?(args: Parsed): string[];
  /** Rewrites argv before parsing, for syntax parseArgs cannot express. */
  preprocess?(argv: string[]): string[];
  run(args: Parsed, io: CliIO): Promise<number>;
}

/** Options most commands share. */
export const FORMAT_OPTION: OptionSpec = { format: { type: 'string', short: 'f' } };
export const QUIET_OPTION: OptionSpec = { quiet: { type: 'boolean', short: 'q' } };

/**
 * qemu-img's -T: the cache mode of images only read. Platter reads through
 * the page cache whatever it is (writeback and unsafe differ in flushes
 * only); it is checked so that qemu-img's syntax keeps working (sourceCacheArg).
 */
export const SOURCE_CACHE_OPTION: OptionSpec = { 'source-cache': { type: 'string', short: 'T' } };

/** Lets backing files outside the image's folder be opened. */
export const OPEN_OPTIONS: OptionSpec = { 'allow-external-files': { type: 'boolean' } };
