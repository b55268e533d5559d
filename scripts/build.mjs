// Builds what Node runs: the `platter` CLI bundles. esbuild, not tsc, because
// it bundles the whole CLI in ~50 ms; `npm run typecheck` runs tsc for types.
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
const cliBundle = {
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
};
await build({
  ...cliBundle,
  entryPoints: { cli: 'core/cli/main.ts', 'code-cache': 'core/cli/code-cache.ts', 'copy-worker': 'core/ops/copy-worker.ts' },
});

{
  const { TRAIN_CODE_CACHE, writeCodeCache } = createRequire(import.meta.url)('../dist/code-cache.cjs');
  for (const bundle of ['cli', 'copy-worker']) writeCodeCache(fileURLToPath(new URL(`../dist/${bundle}.cjs`, import.meta.url)));
  warmCodeCaches(TRAIN_CODE_CACHE);
}

/**
 * Runs common commands once, each rewriting the caches with what it ran
 * (see TRAIN_CODE_CACHE): converts raw->qcow2 and back on two copy threads
 * whatever the cores here (the source is over their 64 MiB minimum), info,
 * check, map and compare.
 */
function warmCodeCaches(trainVariable) {
  const dir = mkdtempSync(join(tmpdir(), 'platter-build-'));
  try {
    const src = join(dir, 'src.raw');
    const fd = openSync(src, 'w');
    ftruncateSync(fd, 80 << 20);
    for (let at = 0; at < 80 << 20; at += 8 << 20) writeSync(fd, randomBytes(1 << 20), 0, 1 << 20, at);
    closeSync(fd);
    const [qcow2, raw] = [join(dir, 'a.qcow2'), join(dir, 'b.raw')];
    const commands = [
      ['convert', '-f', 'raw', '-O', 'qcow2', src, qcow2],
      ['convert', '-O', 'raw', qcow2, raw],
      ['info', qcow2],
      ['check', qcow2],
      ['map', qcow2],
      ['compare', qcow2, raw],
    ];
    const bin = fileURLToPath(new URL('../bin/platter.cjs', import.meta.url));
    for (const args of commands) {
      const env = { ...process.env, [trainVariable]: '1', PLATTER_COPY_THREADS: '2' };
      const r = spawnSync(process.execPath, [bin, ...args], { env, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`build: warming the code caches, platter ${args[0]} failed: ${r.stderr || r.error}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
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
