#!/usr/bin/env node
// The `platter` command. The CLI is bundled into dist/ by `npm install`
// (prepare) or `npm run build`.
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';

// Reads, writes, seeks and hashes all queue on libuv's thread pool. Two
// threads per core (at least Node's 4) keep a copy's reads and writes going
// without crowding each other: on a 2-core VM (2 GiB bench image, 6
// interleaved runs each) 16 threads made raw->raw about 50% slower than 4
// with a warm cache (the kernel's inode lock spinning, the main thread
// pre-empted) and no faster with a cold one. Set before the pool's first use.
process.env.UV_THREADPOOL_SIZE ??= String(Math.max(4, 2 * availableParallelism()));

const cli = fileURLToPath(new URL('../dist/cli.mjs', import.meta.url));
if (!existsSync(cli)) {
  process.stderr.write('platter: not built yet; run `npm run build` in the Platter folder\n');
  process.exit(1);
}
const { run } = await import(cli);
process.exitCode = await run(process.argv.slice(2));
