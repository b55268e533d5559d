#!/usr/bin/env node
// The `platter` command. The CLI is bundled into dist/ by `npm install`
// (prepare) or `npm run build`. CommonJS: Node starts an ES module entry
// about 10 ms slower.
'use strict';
const { existsSync } = require('node:fs');
const { availableParallelism } = require('node:os');
const { join } = require('node:path');

// Reads, writes, seeks and hashes all queue on libuv's thread pool. Two
// threads per core (at least Node's 4) keep a copy's reads and writes going
// without crowding each other: on a 2-core VM (2 GiB bench image, 6
// interleaved runs each) 16 threads made raw->raw about 50% slower than 4
// with a warm cache (the kernel's inode lock spinning, the main thread
// pre-empted) and no faster with a cold one. Set before the pool's first use.
process.env.UV_THREADPOOL_SIZE ??= String(Math.max(4, 2 * availableParallelism()));

const dist = join(__dirname, '..', 'dist');
if (!existsSync(join(dist, 'cli.cjs'))) {
  process.stderr.write('platter: not built yet; run `npm run build` in the Platter folder\n');
  process.exit(1);
}
const { loadBundle, useCliV8Flags } = require(join(dist, 'code-cache.cjs'));
const { run, startAhead } = loadBundle(join(dist, 'cli.cjs')).exports;
const argv = process.argv.slice(2);
// The CLI's V8 flags are set once the command has loaded what it runs (core/cli/code-cache.ts).
startAhead(argv, useCliV8Flags);
run(argv).then((code) => {
  process.exitCode = code;
});
