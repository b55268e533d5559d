#!/usr/bin/env node
// The `platter` command. The CLI is bundled into dist/ by `npm install`
// (prepare) or `npm run build`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../dist/cli.mjs', import.meta.url));
if (!existsSync(cli)) {
  process.stderr.write('platter: not built yet; run `npm run build` in the Platter folder\n');
  process.exit(1);
}
const { run } = await import(cli);
process.exitCode = await run(process.argv.slice(2));
