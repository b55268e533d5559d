// Builds what Node runs: the `platter` CLI bundle. esbuild, not tsc, because
// it bundles the whole CLI in ~50 ms; `npm run typecheck` runs tsc for types.
import { build } from 'esbuild';

await build({
  entryPoints: { cli: 'core/cli/main.ts' },
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: true,
  // koffi loads its native library from its own folder at run time.
  external: ['koffi'],
  logLevel: 'warning',
});
