/// <reference types="vite/client" />

// What the preload (electron/preload.ts) exposes. Optional because the same
// renderer also runs in a plain browser (tests, the web host) without it.
// The typed client generated from the IPC contract replaces this later.
interface PlatterApi {
  readonly version: string;
}

interface Window {
  readonly platter?: PlatterApi;
}
