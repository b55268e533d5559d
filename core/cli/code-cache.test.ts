/**
 * The code-cache loader. Bundles are loaded in a new Node process, through
 * the built loader (dist/code-cache.cjs; `npm test` builds first): a process
 * that compiled a text once keeps it in memory and would never look at the
 * cache.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../test/tmp.js';
import { cacheFileOf, CLI_V8_FLAGS, TRAIN_CODE_CACHE, writeCodeCache } from './code-cache.js';

const DIST = fileURLToPath(new URL('../../dist/', import.meta.url));

let t: ReturnType<typeof tempDir>;
beforeEach(() => {
  t = tempDir('platter-code-cache-');
});
afterEach(() => t.cleanup());

/** A bundle whose exports say which text ran, and what CommonJS gave it. */
const bundle = (word: string) =>
  `const path = require('node:path');\n` +
  `module.exports = { word: ${JSON.stringify(word)}, file: __filename, dir: __dirname, sep: path.sep, self: exports };\n`;

/**
 * Loads `file` in a new process (under V8 flags `v8Flags` if given):
 * whether its code came from the cache, and its exports.
 */
function loadInChild(
  file: string,
  v8Flags?: string,
  env: NodeJS.ProcessEnv = {},
): { fromCache: boolean; exports: Record<string, unknown> } {
  const script =
    (v8Flags ? `require('node:v8').setFlagsFromString(${JSON.stringify(v8Flags)});` : '') +
    `const r = require(${JSON.stringify(DIST + 'code-cache.cjs')}).loadBundle(${JSON.stringify(file)});` +
    `if (typeof r.exports.exercise === 'function') r.exports.exercise();` +
    `process.stdout.write(JSON.stringify(r));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, ...env } });
  expect(r.stderr).toBe('');
  return JSON.parse(r.stdout);
}

describe('code cache', () => {
  it('runs a bundle from its cache, as require() would', () => {
    const file = t.path('b.cjs');
    writeFileSync(file, bundle('first'));
    writeCodeCache(file);
    expect(loadInChild(file)).toEqual({
      fromCache: true,
      exports: { word: 'first', file, dir: t.dir, sep: '/', self: {} },
    });
  });

  it('never runs an older text from a cache V8 would take (same length)', () => {
    const file = t.path('b.cjs');
    writeFileSync(file, bundle('first'));
    writeCodeCache(file);
    writeFileSync(file, bundle('other'));
    expect(loadInChild(file)).toMatchObject({ fromCache: false, exports: { word: 'other' } });
  });

  it.each([
    ['missing', () => {}],
    ['empty', (cache: string) => writeFileSync(cache, '')],
    ['cut short', (cache: string) => writeFileSync(cache, readFileSync(cache).subarray(0, 40))],
    ['made from another text', (cache: string) => writeFileSync(cache, readFileSync(cache).fill(0x5a, 10, 11))],
    ['garbage after its source', (cache: string, length: number) => writeFileSync(cache, readFileSync(cache).fill(0x5a, length))],
  ])('compiles from source when the cache is %s', (how, damage) => {
    const file = t.path('b.cjs');
    writeFileSync(file, bundle('first'));
    if (how !== 'missing') writeCodeCache(file);
    damage(cacheFileOf(file), readFileSync(file).length);
    expect(loadInChild(file)).toMatchObject({ fromCache: false, exports: { word: 'first' } });
  });

  it('the build caches the CLI for the Node that runs it, as bin/platter.cjs loads it: before the CLI\'s V8 flags', () => {
    const { fromCache, exports } = loadInChild(DIST + 'cli.cjs');
    expect(fromCache).toBe(true);
    expect(exports).toHaveProperty('COMMANDS');
  });

  it('the build caches the copy worker as a thread started ahead of its copy loads it', () => {
    // Started without its data, the worker says it is ready and waits: the thread is ended after its answer.
    const script =
      `const { Worker } = require('node:worker_threads');` +
      `const thread = new Worker(${JSON.stringify(
        `const r = require(${JSON.stringify(DIST + 'code-cache.cjs')}).loadBundle(${JSON.stringify(DIST + 'copy-worker.cjs')});` +
          `require('node:worker_threads').parentPort.postMessage({ fromCache: r.fromCache });`,
      )}, { eval: true });` +
      `const said = [];` +
      `thread.on('message', (m) => { said.push(m); if (said.length === 2) { process.stdout.write(JSON.stringify(said)); thread.terminate(); } });`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([{ type: 'ready' }, { fromCache: true }]);
  });

  it('compiles from source under other V8 flags than the cache was made under', () => {
    const file = t.path('b.cjs');
    writeFileSync(file, bundle('first'));
    writeCodeCache(file);
    expect(loadInChild(file, CLI_V8_FLAGS)).toMatchObject({ fromCache: false, exports: { word: 'first' } });
  });

  it('a process that ran the bundle while training writes its cache again, with what it ran', () => {
    const file = t.path('b.cjs');
    // A function V8 compiles only when it runs; its body is big enough to show in the cache's size.
    const body = Array.from({ length: 400 }, (_, i) => `  total += ${i} * n;`).join('\n');
    writeFileSync(file, `${bundle('first')}module.exports.exercise = (n = 2) => {\n  let total = 0;\n${body}\n  return total;\n};\n`);
    writeCodeCache(file);
    const cold = readFileSync(cacheFileOf(file)).length;
    expect(loadInChild(file)).toMatchObject({ fromCache: true });
    expect(readFileSync(cacheFileOf(file)).length).toBe(cold);
    expect(loadInChild(file, undefined, { [TRAIN_CODE_CACHE]: '1' })).toMatchObject({ fromCache: true });
    expect(readFileSync(cacheFileOf(file)).length).toBeGreaterThan(cold + 2000);
    expect(loadInChild(file)).toMatchObject({ fromCache: true, exports: { word: 'first' } });
  });

  it.each(['cli.cjs', 'copy-worker.cjs'])('the build warms the cache of %s: it holds more than the top level', (name) => {
    const copy = t.path(name);
    writeFileSync(copy, readFileSync(DIST + name));
    writeCodeCache(copy);
    // V8's part of a cache: what follows the copy of the source.
    const v8Bytes = (file: string) => readFileSync(cacheFileOf(file)).length - readFileSync(file).length;
    expect(v8Bytes(DIST + name)).toBeGreaterThan(1.3 * v8Bytes(copy));
  });

  it.each(['cli.cjs', 'copy-worker.cjs', 'electron/job-worker.cjs', 'electron/main.cjs'])(
    'the build makes %s strict, as the ES modules it comes from',
    (name) => {
      expect(readFileSync(DIST + name, 'utf8')).toMatch(/^'use strict';/);
    },
  );
});
