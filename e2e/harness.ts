/**
 * The real web host for the browser tests: `dist/electron/web-host.cjs` (what
 * `npm run start:web` runs: the engine's handlers on 127.0.0.1, the built
 * renderer, a WebSocket at /ws), started as its own process and stopped
 * after. The host is looked up at run time, so these tests can land before
 * it does: when it is missing, findWebHost() says why and the tests skip.
 * PLATTER_E2E_HOST_URL=<url with #token=...> runs them against a host
 * already running instead.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { root } from './browser.js';

export interface Host {
  /** The page to open, token included (`http://127.0.0.1:PORT/#token=...`). */
  url: string;
  close: () => Promise<void>;
}

const SERVER = join(root, 'electron/web/server.ts');
const BUNDLE = join(root, 'dist/electron/web-host.cjs');
/** What the host prints once it listens. */
const READY = /Platter is at (http:\/\/\S+)/;

export async function findWebHost(): Promise<{ start?: () => Promise<Host>; reason?: string }> {
  const given = process.env.PLATTER_E2E_HOST_URL;
  if (given) return { start: async () => ({ url: given, close: async () => undefined }) };
  if (!existsSync(SERVER)) return { reason: 'electron/web/server.ts does not exist yet' };
  // A computed specifier: type checking must not need a file that may not exist.
  const spec = '../electron/web/server.js';
  const mod = (await import(/* @vite-ignore */ spec)) as { startWebHost?: unknown };
  if (typeof mod.startWebHost !== 'function') return { reason: 'electron/web/server.ts does not export startWebHost' };
  if (!existsSync(BUNDLE)) return { reason: 'dist/electron/web-host.cjs is missing (run node scripts/build.mjs)' };
  return { start: spawnHost };
}

function spawnHost(): Promise<Host> {
  const child = spawn(process.execPath, [BUNDLE], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PLATTER_WEB_PORT: '0' } });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      void close();
      reject(new Error(`the web host did not start within 20 s: ${out}${err}`));
    }, 20_000);
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = READY.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1]!, close });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the web host exited (${code}) before listening: ${err.trim()}`));
    });
  });
}
