// Preload for the sandboxed renderer. Sandboxed preloads can require only a
// few modules ('electron' among them), so scripts/build.mjs bundles this file
// to CommonJS and it imports nothing but electron and the zod-free list of
// method names. It exposes `window.platter`: one function per contract method
// (ipcRenderer.invoke on `platter:<method>`), `on(event, listener)`, the app
// version, and `pathForFile` (the path of a file the user dropped on the
// window; sandboxed pages cannot see paths otherwise); nothing else.
import { contextBridge, ipcRenderer, webUtils } from 'electron';
import { CHANNEL_PREFIX, EVENT_CHANNEL, METHOD_NAMES } from './ipc/methods.js';

// Replaced at build time by esbuild's `define` with package.json's version
// (the sandbox has no fs to read it).
declare const __PLATTER_VERSION__: string;

type Reply = { ok: true; output: unknown } | { ok: false; error: { kind: string; message: string } };

// contextBridge rebuilds a thrown Error from its message alone, so a failure
// is rejected as a plain { name: 'ApiError', kind, message } object, which
// crosses whole: callers read err.kind and err.message.
const methods = Object.fromEntries(
  METHOD_NAMES.map((name) => [
    name,
    async (input: unknown) => {
      const reply = (await ipcRenderer.invoke(CHANNEL_PREFIX + name, input)) as Reply;
      if (reply.ok) return reply.output;
      throw { name: 'ApiError', kind: reply.error.kind, message: reply.error.message };
    },
  ]),
);

function on(event: string, listener: (payload: unknown) => void): () => void {
  const relay = (_e: unknown, m: { event: string; payload: unknown }) => {
    if (m.event === event) listener(m.payload);
  };
  ipcRenderer.on(EVENT_CHANNEL, relay);
  return () => {
    ipcRenderer.removeListener(EVENT_CHANNEL, relay);
  };
}

const pathForFile = (file: File): string => webUtils.getPathForFile(file);

contextBridge.exposeInMainWorld('platter', Object.freeze({ ...methods, on, pathForFile, version: __PLATTER_VERSION__ }));
