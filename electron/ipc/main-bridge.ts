/**
 * The only place Electron's main process touches ipcMain: one handler per
 * contract method on channel `platter:<method>`, answered by the shared
 * handlers, and events pushed on `platter:event`. A call is served only when
 * it comes from our window's top frame showing our renderer; anything else
 * (a subframe, a page navigated elsewhere) gets { kind: 'Forbidden' }.
 */
import { ipcMain, type BrowserWindow, type IpcMainInvokeEvent } from 'electron';
import type { EventName, EventPayload } from './contract.js';
import type { Handlers, Reply } from './handlers.js';
import { CHANNEL_PREFIX, EVENT_CHANNEL, METHOD_NAMES } from './methods.js';
import { isRendererUrl } from './sender.js';

const FORBIDDEN: Reply = { ok: false, error: { kind: 'Forbidden', message: 'this page may not call the engine' } };

/** Registers every method once; `window()` is the app's window of the moment (macOS may recreate it). */
export function registerIpc(window: () => BrowserWindow | undefined, handlers: Handlers, rendererUrl: string): void {
  const trusted = (event: IpcMainInvokeEvent) => {
    const win = window();
    const frame = event.senderFrame;
    if (win === undefined || frame === null) return false;
    return frame === win.webContents.mainFrame && isRendererUrl(frame.url, rendererUrl);
  };
  for (const method of METHOD_NAMES) {
    ipcMain.handle(CHANNEL_PREFIX + method, (event, input: unknown) =>
      trusted(event) ? handlers.call(method, input) : FORBIDDEN,
    );
  }
}

/** Pushes an event to the window's renderer. */
export function sendEvent<E extends EventName>(
  win: BrowserWindow | undefined,
  event: E,
  payload: EventPayload<E>,
): void {
  if (win && !win.isDestroyed()) win.webContents.send(EVENT_CHANNEL, { event, payload });
}
