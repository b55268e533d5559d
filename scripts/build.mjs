// Builds what Node runs: the `platter` CLI bundle. esbuild, not tsc, because
// it bundles the whole CLI in ~50 ms; `npm run typecheck` runs tsc for types.
import { build } from 'esbuild';

await build({
  entryPoints: { cli: 'core/cli/main.ts', 'copy-worker': 'core/ops/copy-worker.ts' },
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: true,
  // koffi loads its native library, and zstd-wasm its WebAssembly, from
  // their own folders at run time.
  external: ['koffi', '@bokuweb/zstd-wasm'],
  logLevel: 'warning',
});

// The desktop app: Electron's main process and preload as CommonJS bundles
// (a sandboxed preload can't load ES modules), the convert jobs' worker and
// the web host (same folder, so both find job-worker.cjs and ../renderer),
// and the React renderer with Vite. 'electron' is provided by the runtime;
// koffi and zstd-wasm load binaries. core/io/native.ts finds koffi through
// import.meta.url, which CommonJS lacks: the banner supplies it.
{
  const { readFile } = await import('node:fs/promises');
  const { fileURLToPath } = await import('node:url');
  const { build: viteBuild } = await import('vite');
  const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));

  const electronBundle = {
    outdir: 'dist/electron',
    outExtension: { '.js': '.cjs' },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    sourcemap: true,
    external: ['electron', 'koffi', '@bokuweb/zstd-wasm'],
    define: { __PLATTER_VERSION__: JSON.stringify(pkg.version) },
    logLevel: 'warning',
  };
  await Promise.all([
    // The sandboxed preload may require nothing but electron: no banner.
    build({ ...electronBundle, entryPoints: { preload: 'electron/preload.ts' } }),
    build({
      ...electronBundle,
      entryPoints: {
        main: 'electron/main.ts',
        'job-worker': 'electron/job-worker.ts',
        'copy-worker': 'core/ops/copy-worker.ts',
        'web-host': 'electron/web/start.ts',
      },
      define: { ...electronBundle.define, 'import.meta.url': '__platterModuleUrl' },
      banner: { js: "var __platterModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
    }),
    viteBuild({
      configFile: fileURLToPath(new URL('../renderer/vite.config.ts', import.meta.url)),
      logLevel: 'warn',
    }),
  ]);
}
