/**
 * Starts the real web host (electron/web/server.ts: the engine's handlers on
 * 127.0.0.1, the built renderer, a WebSocket at /ws) for the browser tests.
 * The host is looked up at run time so these tests can land before it: when
 * it is missing, startHost() says why and the tests that need it skip.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { root } from './browser.js';

export interface Host {
  /** The page to open, token included (`http://127.0.0.1:PORT/#token=...`). */
  url: string;
  close: () => Promise<void>;
}

/** What startWebHost may return: the URL, or the parts to build it from. */
interface Started {
  url?: string;
  port?: number;
  token?: string;
  close?: () => Promise<void> | void;
}

const SERVER = join(root, 'electron/web/server.ts');

/** Loads the web host module, or the reason it can't be used. */
export async function findWebHost(): Promise<{ start?: (opts: object) => Promise<Started>; reason?: string }> {
  if (!existsSync(SERVER)) return { reason: 'electron/web/server.ts does not exist yet' };
  // A computed specifier: type checking must not need a file that may not exist.
  const spec = '../electron/web/server.js';
  const mod = (await import(/* @vite-ignore */ spec)) as { startWebHost?: unknown };
  if (typeof mod.startWebHost !== 'function') return { reason: 'electron/web/server.ts does not export startWebHost' };
  return { start: mod.startWebHost as (opts: object) => Promise<Started> };
}

export async function startHost(start: (opts: object) => Promise<Started>): Promise<Host> {
  const s = await start({ host: '127.0.0.1', port: 0, rendererDir: join(root, 'dist/renderer') });
  const url = s.url ?? (s.port !== undefined && s.token !== undefined ? `http://127.0.0.1:${s.port}/#token=${s.token}` : undefined);
  if (!url) throw new Error('startWebHost returned neither url nor port and token');
  return { url, close: async () => void (await s.close?.()) };
}
