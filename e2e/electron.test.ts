// Launches the real desktop app with Playwright's Electron driver when
// Electron's binary is installed. npm here installs electron without running
// its postinstall download (package.json allowScripts), so on such machines
// this test is skipped, loudly. It needs the build output (npm test builds first).
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { _electron as electron, type ElectronApplication } from 'playwright-core';
import { afterAll, describe, expect, it } from 'vitest';

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
if (!hasElectron) console.warn(`SKIPPED electron launch test: ${found.reason}`);

describe('desktop app', () => {
  let app: ElectronApplication | undefined;
  afterAll(async () => {
    await app?.close();
  });

  it.skipIf(!hasElectron)('opens one locked-down window titled Platter', async () => {
    const env = { ...process.env } as Record<string, string>;
    delete env.ELECTRON_RUN_AS_NODE;
    // Chromium refuses to start as root with its OS sandbox (containers, CI);
    // the renderer sandbox under test (sandbox: true) is Electron's own setting.
    const args = process.getuid?.() === 0 ? ['--no-sandbox', root] : [root];
    app = await electron.launch({ executablePath: found.path!, args, env, cwd: root });
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
