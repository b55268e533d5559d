/** Bundles core/test/crash-worker.ts for crash tests that kill a real writer process. */
import { build } from 'esbuild';

/** Writes the worker bundle to `outfile` (an .mjs path in a test's temporary folder). */
export async function buildCrashWorker(outfile: string): Promise<void> {
  await build({
    entryPoints: [new URL('./crash-worker.ts', import.meta.url).pathname],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: ['koffi'],
    // native.ts loads koffi relative to itself: from the temporary folder it
    // would not find it, and the worker would run without the FFI calls.
    define: { 'import.meta.url': JSON.stringify(new URL('../io/native.ts', import.meta.url).href) },
    logLevel: 'warning',
  });
}
