// Electron main process: one window, locked down. The renderer is untrusted
// (see shared ARCHITECTURE.md, "Security principles"): it runs sandboxed with
// context isolation and no Node, can't navigate or open windows, and gets no
// permissions. It talks to the engine only through the typed contract
// (electron/ipc/contract.ts): ipc/main-bridge.ts checks each call's sender, and
// the shared handlers re-validate its input; converts run as jobs in worker
// threads so this process stays responsive.
//
// Bundled by scripts/build.mjs to dist/electron/main.cjs (CommonJS), so
// __dirname is dist/electron at run time, both from the source tree and
// inside the packaged app.asar.
import { app, BrowserWindow, dialog, Menu, session, type MenuItemConstructorOptions } from 'electron';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { createHandlers, type HandlerDeps } from './ipc/handlers.js';
import { registerIpc, sendEvent } from './ipc/main-bridge.js';
import { watchDevices } from './devices-watch.js';
import { JobManager } from './jobs.js';

const isMac = process.platform === 'darwin';

const PRELOAD_PATH = path.join(__dirname, 'preload.cjs');
const RENDERER_INDEX = path.join(__dirname, '..', 'renderer', 'index.html');

// A dev server URL (e.g. Vite's) may replace the built renderer, but only when
// running unpackaged and only from this machine: a packaged app never loads
// remote content.
function rendererUrl(): string {
  const dev = process.env.PLATTER_RENDERER_URL;
  if (dev && !app.isPackaged) {
    const url = URL.canParse(dev) ? new URL(dev) : undefined;
    const local = url !== undefined && ['localhost', '127.0.0.1', '[::1]'].includes(url.hostname);
    if (url && local && (url.protocol === 'http:' || url.protocol === 'https:')) return url.href;
    console.warn(`Ignoring PLATTER_RENDERER_URL=${dev}: only an http(s) URL on localhost is allowed`);
  }
  return pathToFileURL(RENDERER_INDEX).href;
}

function createWindow(): BrowserWindow {
  const win = new BrowserWindow({
    title: 'Platter',
    width: 1100,
    height: 720,
    minWidth: 640,
    minHeight: 400,
    show: false,
    webPreferences: {
      // Reviewed: the preload runs sandboxed and exposes only the contract's
      // methods (electron/preload.ts); electronegativity asks this of every preload.
      preload: PRELOAD_PATH, // eng-disable PRELOAD_JS_CHECK
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      spellcheck: false,
      // A middle click would otherwise open a link in a new window.
      disableBlinkFeatures: 'Auxclick',
    },
  });
  win.once('ready-to-show', () => win.show());
  void win.loadURL(rendererUrl());
  return win;
}

// Applied to every web contents the app creates: no navigation away from the
// loaded page, no new windows, no <webview>. Links meant for the user's
// browser will go through a vetted IPC call when there are any.
function lockDownWebContents(contents: Electron.WebContents): void {
  contents.on('will-navigate', (event) => {
    event.preventDefault();
  });
  contents.on('will-redirect', (event) => {
    event.preventDefault();
  });
  contents.on('will-attach-webview', (event) => {
    event.preventDefault();
  });
  contents.setWindowOpenHandler(() => ({ action: 'deny' }));
}

function denyAllPermissions(): void {
  session.defaultSession.setPermissionRequestHandler((_contents, _permission, callback) => {
    callback(false);
  });
  session.defaultSession.setPermissionCheckHandler(() => false);
}

/** The app's window, if open. */
const currentWindow = () => BrowserWindow.getAllWindows()[0];

/** Native file dialogs, parented to the window; a cancelled dialog answers null. */
const dialogs: Pick<HandlerDeps, 'openDialog' | 'saveDialog'> = {
  async openDialog({ title }) {
    const win = currentWindow();
    const options = { title, properties: ['openFile' as const] };
    const r = win ? await dialog.showOpenDialog(win, options) : await dialog.showOpenDialog(options);
    return { path: r.canceled ? null : (r.filePaths[0] ?? null) };
  },
  async saveDialog({ title, defaultPath }) {
    const win = currentWindow();
    const options = { title, defaultPath };
    const r = win ? await dialog.showSaveDialog(win, options) : await dialog.showSaveDialog(options);
    return { path: r.canceled ? null : (r.filePath ?? null) };
  },
};

const jobs = new JobManager({
  workerPath: path.join(__dirname, 'job-worker.cjs'),
  onEvent: (info) => sendEvent(currentWindow(), 'job', info),
});

function buildMenu(): Menu {
  const template: MenuItemConstructorOptions[] = [
    ...(isMac ? [{ role: 'appMenu' } as MenuItemConstructorOptions] : []),
    { label: 'File', submenu: [isMac ? { role: 'close' } : { role: 'quit' }] },
    { role: 'editMenu' },
    {
      label: 'View',
      submenu: [
        { role: 'reload' },
        { role: 'forceReload' },
        { role: 'toggleDevTools' },
        { type: 'separator' },
        { role: 'resetZoom' },
        { role: 'zoomIn' },
        { role: 'zoomOut' },
        { type: 'separator' },
        { role: 'togglefullscreen' },
      ],
    },
    { role: 'windowMenu' },
  ];
  return Menu.buildFromTemplate(template);
}

// Every renderer is sandboxed, whatever a future window forgets to say.
app.enableSandbox();

if (!app.requestSingleInstanceLock()) {
  app.quit();
} else {
  app.on('second-instance', () => {
    const [win] = BrowserWindow.getAllWindows();
    if (win) {
      if (win.isMinimized()) win.restore();
      win.focus();
    }
  });

  app.on('web-contents-created', (_event, contents) => lockDownWebContents(contents));

  app.on('window-all-closed', () => {
    if (!isMac) app.quit();
  });

  // Running jobs are cancelled (their targets never appear) before the app quits.
  let jobsStopped = false;
  app.on('will-quit', (event) => {
    if (jobsStopped || !jobs.list().some((j) => j.state === 'running')) return;
    event.preventDefault();
    jobsStopped = true;
    void jobs.shutdown().then(() => app.quit());
  });

  void app.whenReady().then(() => {
    denyAllPermissions();
    registerIpc(currentWindow, createHandlers({ jobs, ...dialogs }), rendererUrl());
    Menu.setApplicationMenu(buildMenu());
    // Only the instance that owns the window watches the drives.
    watchDevices((list) => sendEvent(currentWindow(), 'devices', list));
    createWindow();
    app.on('activate', () => {
      if (BrowserWindow.getAllWindows().length === 0) createWindow();
    });
  });
}
