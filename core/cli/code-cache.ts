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
 * starts with a SHA-256 of the source it was made from: a rebuilt bundle
 * never runs an older bundle's code. A cache V8 rejects (another Node
 * version, other V8 flags) or one that is missing costs nothing but the
 * saving: the bundle is compiled from source as require() would.
 */
import { createHash } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { Script } from 'node:vm';

const HASH_BYTES = 32;

/** The cache file of bundle `file`. */
export const cacheFileOf = (file: string) => `${file}.cache`;

const hashOf = (source: string) => createHash('sha256').update(source).digest();

/**
 * The bundle as a function of CommonJS's five arguments, as Node's own
 * loader wraps a module; on one line so that line numbers stay the file's.
 */
function compile(file: string, source: string, cachedData?: Buffer): Script {
  const wrapped = `(function (exports, require, module, __filename, __dirname) { ${source}\n})`;
  return new Script(wrapped, { filename: file, cachedData });
}

/** Writes the code cache of bundle `file` beside it (at build time; replaced whole, never half-written). */
export function writeCodeCache(file: string): void {
  const source = readFileSync(file, 'utf8');
  const cache = Buffer.concat([hashOf(source), compile(file, source).createCachedData()]);
  const temporary = `${cacheFileOf(file)}.${process.pid}.tmp`;
  writeFileSync(temporary, cache);
  renameSync(temporary, cacheFileOf(file));
}

/** The code cache made from exactly this source, if there is one. */
function cacheFor(file: string, source: string): Buffer | undefined {
  let cache: Buffer;
  try {
    cache = readFileSync(cacheFileOf(file));
  } catch {
    return undefined;
  }
  if (cache.length <= HASH_BYTES || !hashOf(source).equals(cache.subarray(0, HASH_BYTES))) return undefined;
  return cache.subarray(HASH_BYTES);
}

/**
 * Runs CommonJS bundle `file` (an absolute path) and returns its exports,
 * and whether V8 took its code from the cache.
 */
export function loadBundle(file: string): { exports: unknown; fromCache: boolean } {
  const source = readFileSync(file, 'utf8');
  const cache = cacheFor(file, source);
  const script = compile(file, source, cache);
  const module = { exports: {} as unknown };
  script.runInThisContext()(module.exports, createRequire(file), module, file, dirname(file));
  return { exports: module.exports, fromCache: cache !== undefined && !script.cachedDataRejected };
}
