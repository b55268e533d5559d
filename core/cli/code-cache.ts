/**
 * Starting the CLI's CommonJS bundles (dist/cli.cjs, dist/copy-worker.cjs)
 * from a V8 code cache made at build time, so that a command does not parse
 * and compile half a megabyte of JavaScript before it starts. Measured on a
 * 2-core VM (hyperfine, 40 runs): `platter info` on a raw file took 70 ms
 * from the ES module bundle, 62 ms from a CommonJS one and 53 ms from the
 * CommonJS one with this cache; a copy worker thread sent its first message
 * after 60 ms instead of 44. (Node 22's module.enableCompileCache does this
 * for every module; Node 20 has no such switch.)
 *
 * V8 checks a cache against the source's length only, so the cache file
 * starts with the very source it was made from, compared byte for byte: a
 * rebuilt bundle never runs an older bundle's code. (A SHA-256 needed
 * node:crypto, which a copy thread compiles from source under the CLI's
 * flags: about 11 ms of its start.) A cache V8 rejects (another Node
 * version, other V8 flags) or one that is missing costs nothing but the
 * saving: the bundle is compiled from source as require() would.
 *
 * The CLI also runs under its own V8 flags (CLI_V8_FLAGS). V8 refuses a code
 * cache made under other flags, Node's own cache of its built-in modules
 * too, so every bundle and built-in is loaded under V8's defaults, the
 * caches are made under them, and the CLI sets its flags after: at once for
 * most commands, once its copy threads have loaded for a convert
 * (core/cli/main.ts startAhead).
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { Script } from 'node:vm';
import { threadId } from 'node:worker_threads';

/**
 * V8 flags the `platter` command runs under.
 *
 * --interrupt-budget: V8 considers optimizing a function each time it has
 * run about this many bytes of bytecode (default 66 KiB), so with 15 times
 * that, a function is optimized once it has taken a few ms, not at once.
 * A copy's hot functions run on every thread and each thread's V8 optimized
 * them itself, some twice (offsets past 2 GiB overflow V8's small
 * integers): optimizing took 18% of a 2 GiB raw->qcow2 convert's CPU time,
 * more than it saved; what runs long enough to earn it is still optimized.
 * Medians of 9 alternating runs, 2 GiB bench image, `-t unsafe`, in ms
 * (default -> this): raw->raw 551 -> 500, raw->qcow2 666 -> 548,
 * qcow2->raw 610 -> 519, vhdx->qcow2 773 -> 639, raw->vpc 620 -> 569,
 * raw->vhdx 659 -> 691 (the one loss); 8 GiB raw->qcow2 about 1950 ->
 * 1800-1900, user CPU 1105 -> 830-960. check, compare, hash, map and
 * convert -c did not change; short commands took 1-3 ms more.
 */
export const CLI_V8_FLAGS = '--interrupt-budget=1000000';

/**
 * Sets CLI_V8_FLAGS for the whole process, once everything the command
 * runs is loaded. Node warns that flags set after start may misbehave;
 * these only decide when V8 optimizes. Not while the build trains the
 * caches (TRAIN_CODE_CACHE): they are made as the command exits, and must
 * be made under the flags they are loaded under.
 */
export function useCliV8Flags(): void {
  if (process.env[TRAIN_CODE_CACHE] !== '1') setFlagsFromString(CLI_V8_FLAGS);
}

/** The cache file of bundle `file`. */
export const cacheFileOf = (file: string) => `${file}.cache`;

/**
 * The bundle as a function of CommonJS's five arguments, as Node's own
 * loader wraps a module; on one line so that line numbers stay the file's.
 */
function compile(file: string, source: string, cachedData?: Buffer): Script {
  const wrapped = `(function (exports, require, module, __filename, __dirname) { ${source}\n})`;
  return new Script(wrapped, { filename: file, cachedData });
}

/**
 * Set to 1 while the build warms the caches: V8 compiles a function when it
 * first runs, so a cache made from a bundle that has not run holds its top
 * level only, and every command compiled the rest from source. Under it,
 * each bundle loaded writes its cache again as its process or thread exits,
 * with what it ran and what it loaded from the cache. `platter info` on a
 * qcow2 took 57 ms instead of 63 (hyperfine, 40 runs); a 2 GiB convert's
 * main thread compiled some 7 ms less (perf), not visible in its wall time.
 */
export const TRAIN_CODE_CACHE = 'PLATTER_TRAIN_CODE_CACHE';

/** Writes `data` as the code cache of bundle `file`, made from `source`: replaced whole, never half-written. */
function saveCache(file: string, source: Buffer, data: Buffer): void {
  const temporary = `${cacheFileOf(file)}.${process.pid}.${threadId}.tmp`;
  writeFileSync(temporary, Buffer.concat([source, data]));
  renameSync(temporary, cacheFileOf(file));
}

/**
 * Writes the code cache of bundle `file` beside it (at build time), under
 * V8's default flags, which it is loaded under.
 */
export function writeCodeCache(file: string): void {
  const source = readFileSync(file);
  saveCache(file, source, compile(file, source.toString('utf8')).createCachedData());
}

/** The code cache made from exactly this source, if there is one. */
function cacheFor(file: string, source: Buffer): Buffer | undefined {
  let cache: Buffer;
  try {
    cache = readFileSync(cacheFileOf(file));
  } catch {
    return undefined;
  }
  if (cache.length <= source.length || !source.equals(cache.subarray(0, source.length))) return undefined;
  return cache.subarray(source.length);
}

/**
 * Runs CommonJS bundle `file` (an absolute path) and returns its exports
 * and whether V8 took its code from the cache.
 */
export function loadBundle(file: string): { exports: unknown; fromCache: boolean } {
  const bytes = readFileSync(file);
  const source = bytes.toString('utf8');
  const cache = cacheFor(file, bytes);
  const script = compile(file, source, cache);
  if (process.env[TRAIN_CODE_CACHE] === '1') process.once('exit', () => saveCache(file, bytes, script.createCachedData()));
  const module = { exports: {} as unknown };
  script.runInThisContext()(module.exports, createRequire(file), module, file, dirname(file));
  return { exports: module.exports, fromCache: cache !== undefined && !script.cachedDataRejected };
}
