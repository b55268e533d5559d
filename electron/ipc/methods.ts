/**
 * The contract's method names and channels, without zod: the sandboxed
 * preload imports only this (and electron), so its bundle stays tiny.
 * electron/ipc/handlers.ts checks at compile time that this list is exactly
 * the contract's keys.
 */
export const METHOD_NAMES = [
  'formats',
  'info',
  'map',
  'measure',
  'freeSpace',
  'create',
  'check',
  'actions',
  'compact',
  'startConvert',
  'cancelJob',
  'listJobs',
  'devices',
  'openDialog',
  'saveDialog',
] as const;

/** Electron channel of a method: `platter:<method>`. */
export const CHANNEL_PREFIX = 'platter:';
/** Electron channel the main process pushes `{ event, payload }` on. */
export const EVENT_CHANNEL = 'platter:event';
