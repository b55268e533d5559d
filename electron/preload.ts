// Preload for the sandboxed renderer. Sandboxed preloads can require only a
// few modules ('electron' among them), so scripts/build.mjs bundles this file
// to CommonJS and this file imports nothing else. It exposes the smallest
// possible surface; the typed IPC client generated from the contract replaces
// it in a later issue.
import { contextBridge } from 'electron';

// Replaced at build time by esbuild's `define` with package.json's version
// (the sandbox has no fs to read it).
declare const __PLATTER_VERSION__: string;

contextBridge.exposeInMainWorld('platter', Object.freeze({ version: __PLATTER_VERSION__ }));
