// The renderer against the real engine: the built page in Chromium, served by
// the web host, driving real images that qemu-img then judges.
import { existsSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo, qemuIo } from '../core/test/qemu.js';
import { hasTool, sh, tempDir } from '../core/test/tmp.js';
import { canvasHasColours, hasChromium, launch, screenshot, seriousA11yViolations } from './browser.js';
import { findWebHost, type Host } from './harness.js';

const MiB = 2 ** 20;
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

  const openInToolbar = async (path: string) => {
    await page.getByLabel('Image path').fill(path);
    await page.getByRole('button', { name: 'Open', exact: true }).click();
  };

  it('opens an image: its size and a drawn allocation map', async () => {
    const raw = tmp.path('disk.raw');
    sh('qemu-img', ['create', '-f', 'raw', raw, '64M']);
    qemuIo(raw, ['write -P 0xab 0 1M', 'write -P 1 32M 4M'], 'raw');
    await openInToolbar(raw);
    await expect.poll(() => page.getByTestId('virtual-size').textContent()).toContain('64 MiB');
    const canvas = page.getByTestId('map-canvas');
    await canvas.scrollIntoViewIfNeeded();
    // Data and holes: at least two colours on the canvas.
    await expect.poll(() => canvasHasColours(page, '[data-testid=map-canvas]')).toBeGreaterThanOrEqual(2);
    const box = (await canvas.boundingBox())!;
    await page.mouse.move(box.x + 2, box.y + box.height / 2);
    await expect.poll(() => page.locator('.map-tooltip').textContent()).toContain('Data');
    await screenshot(page, 'web-inspector');
  });

  it('creates a qcow2 with cluster_size=4K and lazy_refcounts, and qemu-img agrees', async () => {
    const target = tmp.path('new.qcow2');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.getByLabel('Format').selectOption('qcow2');
    await page.getByLabel('Path of the new image').fill(target);
    await page.getByLabel('Virtual size').fill('64M');
    // lazy_refcounts needs compat=1.1: disabled, with the reason, under 0.10.
    await page.getByLabel('compat').selectOption('0.10');
    await expect.poll(() => page.getByLabel('lazy_refcounts').isDisabled()).toBe(true);
    await page.locator('#create-opt-lazy_refcounts-req').getByText('Needs compat=1.1').waitFor();
    await page.getByLabel('compat').selectOption('1.1');
    await page.getByLabel('lazy_refcounts').check();
    await page.getByLabel('cluster_size').fill('4K');
    await screenshot(page, 'web-create');
    await page.getByRole('button', { name: 'Create', exact: true }).last().click();
    await expect.poll(() => page.getByTestId('virtual-size').textContent()).toContain('64 MiB');
    await page.getByText('4 KiB (4,096 B)').waitFor();
    await screenshot(page, 'web-created');

    expect(problems(qemuCheck(target))).toEqual(CLEAN);
    const info = qemuInfo(target) as { 'virtual-size': number; 'cluster-size': number; 'format-specific': { data: Record<string, unknown> } };
    expect(info['virtual-size']).toBe(64 * MiB);
    expect(info['cluster-size']).toBe(4096);
    expect(info['format-specific'].data['lazy-refcounts']).toBe(true);
    expect(info['format-specific'].data.compat).toBe('1.1');
  });

  it('converts raw to qcow2 through the wizard: pre-flight, progress, a checked result', async () => {
    const source = tmp.path('src.raw');
    const target = tmp.path('out.qcow2');
    sh('qemu-img', ['create', '-f', 'raw', source, '256M']);
    qemuIo(source, ['write -P 0x11 0 64M', 'write -P 0x22 128M 64M'], 'raw');
    await page.getByRole('button', { name: 'Convert' }).click();
    await page.getByLabel('Source images').fill(source);
    await page.getByLabel('Target path').fill(target);
    await page.getByLabel('Target format').selectOption('qcow2');
    await page.getByRole('button', { name: 'Next' }).click();
    await page.getByTestId('required').waitFor();
    await screenshot(page, 'web-convert-preflight');
    await page.getByRole('button', { name: 'Start convert' }).click();
    await page.getByRole('heading', { name: /^Convert(ing to| finished)/ }).waitFor();
    if (await page.locator('#convert-progress').isVisible()) await screenshot(page, 'web-convert-progress');
    await page.getByRole('heading', { name: 'Convert finished' }).waitFor({ timeout: 60_000 });
    await expect.poll(() => page.getByTestId('check-result').textContent(), { timeout: 30_000 }).toContain('No errors were found');
    await screenshot(page, 'web-convert-done');
    expect(qemuCompare(source, target)).toBe('Images are identical.');
    expect(problems(qemuCheck(target))).toEqual(CLEAN);

    await page.getByRole('button', { name: /^Jobs/ }).click();
    await page.getByTestId('jobs-table').getByText(target).waitFor();
    await expect.poll(() => page.getByTestId('jobs-table').textContent()).toContain('done');
    await screenshot(page, 'web-jobs');
  });

  it('cancels a long convert and leaves no target', async () => {
    const source = tmp.path('big.raw');
    const target = tmp.path('big.qcow2');
    sh('qemu-img', ['create', '-f', 'raw', source, '2G']);
    // qemu-io caps one request below 2 GiB.
    qemuIo(source, ['write -P 0x5a 0 1G', 'write -P 0x5b 1G 1G'], 'raw');
    await page.getByRole('button', { name: 'Convert' }).click();
    const again = page.getByRole('button', { name: 'Convert another' });
    if (await again.isVisible()) await again.click();
    await page.getByLabel('Source images').fill(source);
    await page.getByLabel('Target path').fill(target);
    await page.getByLabel('Target format').selectOption('qcow2');
    // Compressing 2 GiB takes long enough to cancel part way.
    await page.getByLabel('Compress', { exact: true }).check();
    await page.getByRole('button', { name: 'Next' }).click();
    await page.getByRole('button', { name: 'Start convert' }).click();
    await page.getByRole('heading', { name: /^Converting to/ }).waitFor();
    await screenshot(page, 'web-convert-running');
    await page.getByRole('button', { name: 'Cancel' }).click();
    await page.getByRole('heading', { name: 'Convert cancelled' }).waitFor({ timeout: 30_000 });
    await screenshot(page, 'web-convert-cancelled');
    expect(existsSync(target)).toBe(false);
  });

  it.each(['light', 'dark'] as const)('has no serious or critical axe violations (%s)', async (scheme) => {
    await page.emulateMedia({ colorScheme: scheme });
    for (const name of ['Jobs', 'Create', 'Convert']) {
      await page.getByRole('button', { name: new RegExp(`^${name}`) }).first().click();
      expect(await seriousA11yViolations(page), `${name} (${scheme})`).toEqual([]);
    }
    await page.getByRole('button', { name: 'new.qcow2' }).click();
    await page.getByTestId('map-canvas').waitFor();
    expect(await seriousA11yViolations(page), `inspector (${scheme})`).toEqual([]);
    await screenshot(page, `web-inspector-${scheme}`);
  });
});
