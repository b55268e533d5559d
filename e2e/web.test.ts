// The renderer against the real engine: the built page in Chromium, served by
// the web host, through the shared scenarios (e2e/scenarios.ts).
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe } from 'vitest';
import { hasTool, tempDir } from '../core/test/tmp.js';
import { hasChromium, launch } from './browser.js';
import { findWebHost, type Host } from './harness.js';
import { appScenarios } from './scenarios.js';

const host = await findWebHost();
if (!host.start) console.warn(`SKIPPED web host tests: ${host.reason}`);
const run = !!host.start && hasChromium() && hasTool('qemu-img', 'apt-get install qemu-utils');

describe.skipIf(!run)('renderer on the web host (real engine)', () => {
  let tmp: ReturnType<typeof tempDir>;
  let server: Host;
  let browser: Browser;
  let page: Page;

  beforeAll(async () => {
    tmp = tempDir('platter-e2e-');
    server = await host.start!();
    browser = await launch();
    page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    page.setDefaultTimeout(20_000);
    await page.goto(server.url);
    await page.getByRole('heading', { name: 'No image open' }).waitFor();
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    tmp?.cleanup();
  });

  appScenarios({ page: () => page, get tmp() { return tmp; }, prefix: 'web' });
});
