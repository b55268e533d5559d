/// <reference types="vite/client" />

// Under Electron the preload exposes the typed API (electron/ipc/contract.ts);
// absent in a plain browser (the web host, tests), where renderer/api.ts
// speaks WebSocket instead.
interface Window {
  readonly platter?: import('../electron/ipc/contract.js').PlatterApi & {
    readonly version?: string;
    /** The path of a dropped file (Electron only). */
    readonly pathForFile?: (file: File) => string;
  };
}
