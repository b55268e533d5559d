// Launches the real desktop app with Playwright's Electron driver when
// Electron's binary is installed. npm here installs electron without running
// its postinstall download (package.json allowScripts), so on such machines
// this test is skipped, loudly. It needs the build output (npm test builds first).
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { _electron as electron, type ElectronApplication, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasTool, tempDir } from '../core/test/tmp.js';
import { appScenarios } from './scenarios.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const require = createRequire(import.meta.url);

/** Path of Electron's executable, or why there is none. */
function findElectron(): { path?: string; reason?: string } {
  let path: unknown;
  try {
    // The electron package exports the executable's path, and throws when
    // its postinstall never downloaded the binary.
    path = require('electron');
  } catch {
    return { reason: "Electron's binary is not installed (npm did not run electron's postinstall download)" };
  }
  if (typeof path !== 'string' || !existsSync(path)) {
    return { reason: `Electron's binary is not installed (${String(path)} does not exist)` };
  }
  if (process.platform === 'linux' && !process.env.DISPLAY && !process.env.WAYLAND_DISPLAY) {
    return { reason: 'no display (set DISPLAY, e.g. run under xvfb-run)' };
  }
  return { path };
}

const found = findElectron();
const hasElectron = found.path !== undefined;
if (!hasElectron) console.warn(`SKIPPED electron launch test and app scenarios: ${found.reason}`);

/** Starts the app as a user would (root needs Chromium's OS sandbox off, as in containers and CI). */
function launchApp(): Promise<ElectronApplication> {
  const env = { ...process.env } as Record<string, string>;
  delete env.ELECTRON_RUN_AS_NODE;
  // Chromium refuses to start as root with its OS sandbox (containers, CI);
  // the renderer sandbox under test (sandbox: true) is Electron's own setting.
  const args = process.getuid?.() === 0 ? ['--no-sandbox', root] : [root];
  return electron.launch({ executablePath: found.path!, args, env, cwd: root });
}

describe('desktop app', () => {
  let app: ElectronApplication | undefined;
  afterAll(async () => {
    await app?.close();
  });

  it.skipIf(!hasElectron)('opens one locked-down window titled Platter', async () => {
    app = await launchApp();
    const page = await app.firstWindow();
    await page.waitForLoadState('domcontentloaded');
    await expect.poll(() => page.title()).toBe('Platter');
    expect(await app.evaluate(({ BrowserWindow }) => BrowserWindow.getAllWindows().map((w) => w.getTitle()))).toEqual(['Platter']);
    await expect.poll(() => page.textContent('h1')).toBe('Platter');

    // The preload exposes the version and nothing of Node reaches the page.
    const pkg = JSON.parse(readFileSync(root + 'package.json', 'utf8')) as { version: string };
    expect(await page.evaluate(() => window.platter?.version)).toBe(pkg.version);
    expect(await page.evaluate(() => typeof (globalThis as Record<string, unknown>).require)).toBe('undefined');
    expect(await page.evaluate(() => typeof (globalThis as Record<string, unknown>).process)).toBe('undefined');

    // The contract's methods answer through the preload; a refused call rejects with its kind.
    type Bridge = Record<string, (input: unknown) => Promise<unknown>>;
    const formats = await page.evaluate(() => (window as unknown as { platter: Bridge }).platter.formats!({}));
    expect((formats as { name: string }[]).map((f) => f.name)).toContain('qcow2');
    const refused = await page.evaluate(() =>
      (window as unknown as { platter: Bridge }).platter.create!({ path: 'x' }).then(
        () => 'resolved',
        (e: { kind?: string }) => e.kind,
      ),
    );
    expect(refused).toBe('Validation');
  });
});

// The same scenarios as the web host runs, in the desktop app.
describe.skipIf(!hasElectron || !hasTool('qemu-img', 'apt-get install qemu-utils'))('desktop app scenarios', () => {
  let app: ElectronApplication;
  let page: Page;
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(async () => {
    tmp = tempDir('platter-e2e-electron-');
    app = await launchApp();
    page = await app.firstWindow();
    page.setDefaultTimeout(20_000);
    await page.getByRole('heading', { name: 'No image open' }).waitFor();
  });
  afterAll(async () => {
    await app?.close();
    tmp?.cleanup();
  });

  appScenarios({ page: () => page, get tmp() { return tmp; }, prefix: 'electron' });
});
