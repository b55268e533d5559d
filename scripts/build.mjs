// Builds what Node runs: the `platter` CLI bundles. esbuild, not tsc, because
// it bundles the whole CLI in ~50 ms; `npm run typecheck` runs tsc for types.
import { build } from 'esbuild';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

// CommonJS, started from V8 code caches made here (core/cli/code-cache.ts):
// `platter` starts about 17 ms sooner than from an ES module bundle.
// core/io/native.ts and copy-workers.ts find their files through
// import.meta.url, which CommonJS lacks: the banner supplies it. koffi loads
// its native library, and zstd-wasm its WebAssembly, from their own folders
// at run time. zstd-wasm is required, not import()ed: V8 loses a script's
// dynamic-import hook when it comes from a code cache. The banner starts
// with the strict-mode directive, as the sources are ES modules (strict):
// esbuild's own comes after the banner, where it is no directive.
const importMetaUrl = {
  define: { 'import.meta.url': '__platterModuleUrl' },
  banner: { js: "'use strict'; var __platterModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
};
await build({
  entryPoints: { cli: 'core/cli/main.ts', 'copy-worker': 'core/ops/copy-worker.ts', 'code-cache': 'core/cli/code-cache.ts' },
  outdir: 'dist',
  outExtension: { '.js': '.cjs' },
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  supported: { 'dynamic-import': false },
  sourcemap: true,
  external: ['koffi', '@bokuweb/zstd-wasm'],
  ...importMetaUrl,
  logLevel: 'warning',
});
{
  // Under the V8 flags the CLI runs with: its copy threads run under them too.
  const { CLI_V8_FLAGS, writeCodeCache } = createRequire(import.meta.url)('../dist/code-cache.cjs');
  for (const bundle of ['cli', 'copy-worker']) {
    writeCodeCache(fileURLToPath(new URL(`../dist/${bundle}.cjs`, import.meta.url)), CLI_V8_FLAGS);
  }
}

// The desktop app: Electron's main process and preload as CommonJS bundles
// (a sandboxed preload can't load ES modules), the convert jobs' worker and
// the web host (same folder, so both find job-worker.cjs and ../renderer),
// and the React renderer with Vite. 'electron' is provided by the runtime;
// koffi and zstd-wasm load binaries; import.meta.url as above.
{
  const { readFile } = await import('node:fs/promises');
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
      define: { ...electronBundle.define, ...importMetaUrl.define },
      banner: importMetaUrl.banner,
    }),
    viteBuild({
      configFile: fileURLToPath(new URL('../renderer/vite.config.ts', import.meta.url)),
      logLevel: 'warn',
    }),
  ]);
}
