// The app's end-to-end scenarios, written once and run against each host:
// the web host in Chromium (e2e/web.test.ts) and, where its binary exists,
// the Electron app (e2e/electron.test.ts). They drive real images that
// qemu-img then judges.
import { existsSync } from 'node:fs';
import type { Page } from 'playwright-core';
import { expect, it } from 'vitest';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo, qemuIo } from '../core/test/qemu.js';
import { hasTool, sh, type tempDir } from '../core/test/tmp.js';
import { canvasHasColours, screenshot, seriousA11yViolations } from './browser.js';

const MiB = 2 ** 20;
/** Loop devices stand in for drives (root only). */
const canLoop = process.getuid?.() === 0 && hasTool('losetup', 'apt-get install mount');

export interface ScenarioContext {
  /** The app's page, once the host is up (set in the caller's beforeAll). */
  page(): Page;
  tmp: ReturnType<typeof tempDir>;
  /** Screenshot name prefix: which host. */
  prefix: string;
}

export function appScenarios(ctx: ScenarioContext): void {
  const openInToolbar = async (path: string) => {
    await ctx.page().getByLabel('Image path').fill(path);
    await ctx.page().getByRole('button', { name: 'Open', exact: true }).click();
  };

  it('opens an image: its size and a drawn allocation map', async () => {
    const raw = ctx.tmp.path('disk.raw');
    sh('qemu-img', ['create', '-f', 'raw', raw, '64M']);
    qemuIo(raw, ['write -P 0xab 0 1M', 'write -P 1 32M 4M'], 'raw');
    await openInToolbar(raw);
    await expect.poll(() => ctx.page().getByTestId('virtual-size').textContent()).toContain('64 MiB');
    const canvas = ctx.page().getByTestId('map-canvas');
    await canvas.scrollIntoViewIfNeeded();
    // Data and holes: at least two colours on the canvas.
    await expect.poll(() => canvasHasColours(ctx.page(), '[data-testid=map-canvas]')).toBeGreaterThanOrEqual(2);
    const box = (await canvas.boundingBox())!;
    await ctx.page().mouse.move(box.x + 2, box.y + box.height / 2);
    await expect.poll(() => ctx.page().locator('.map-tooltip').textContent()).toContain('Data');
    await screenshot(ctx.page(), `${ctx.prefix}-inspector`);
  });

  it('describes an image whose backing file is missing, and says which file where the chain would be', async () => {
    const top = ctx.tmp.path('orphan.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', top, '48M']);
    await openInToolbar(top);
    await expect.poll(() => ctx.page().getByTestId('virtual-size').textContent()).toContain('48 MiB');
    await expect.poll(() => ctx.page().getByTestId('chain-error').textContent()).toContain('cannot open its backing file gone.qcow2');
    await screenshot(ctx.page(), `${ctx.prefix}-missing-backing`);
  });

  it('compacts a VDI from the inspector: zero blocks dropped, the map redrawn, qemu-img finds it clean', async () => {
    const vdi = ctx.tmp.path('packed.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', vdi, '16M']);
    qemuIo(vdi, ['write -P 1 0 1M', 'write -P 0 1M 4M', 'write -P 2 5M 1M'], 'vdi');
    await openInToolbar(vdi);
    await ctx.page().getByRole('button', { name: 'Compact' }).click();
    await expect.poll(() => ctx.page().getByTestId('compact-result').textContent(), { timeout: 30_000 }).toMatch(/went from .* to .*/);
    await screenshot(ctx.page(), `${ctx.prefix}-compacted`);
    expect(problems(qemuCheck(vdi, 'vdi'))).toEqual(CLEAN);
    qemuIo(vdi, ['read -P 1 0 1M', 'read -P 0 1M 4M', 'read -P 2 5M 1M'], 'vdi');
    expect(JSON.parse(sh('qemu-img', ['map', '--output=json', vdi])).filter((e: { data: boolean }) => e.data)).toHaveLength(2);
  });

  it('creates a qcow2 with cluster_size=4K and lazy_refcounts, and qemu-img agrees', async () => {
    const target = ctx.tmp.path('new.qcow2');
    await ctx.page().getByRole('button', { name: 'Create' }).click();
    await ctx.page().getByLabel('Format').selectOption('qcow2');
    await ctx.page().getByLabel('Path of the new image').fill(target);
    await ctx.page().getByLabel('Virtual size').fill('64M');
    // lazy_refcounts needs compat=1.1: disabled, with the reason, under 0.10.
    await ctx.page().getByLabel('compat').selectOption('0.10');
    await expect.poll(() => ctx.page().getByLabel('lazy_refcounts').isDisabled()).toBe(true);
    await ctx.page().locator('#create-opt-lazy_refcounts-req').getByText('Needs compat=1.1').waitFor();
    await ctx.page().getByLabel('compat').selectOption('1.1');
    await ctx.page().getByLabel('lazy_refcounts').check();
    await ctx.page().getByLabel('cluster_size').fill('4K');
    await screenshot(ctx.page(), `${ctx.prefix}-create`);
    await ctx.page().getByRole('button', { name: 'Create', exact: true }).last().click();
    await expect.poll(() => ctx.page().getByTestId('virtual-size').textContent()).toContain('64 MiB');
    await ctx.page().getByText('4 KiB (4,096 B)').waitFor();
    await screenshot(ctx.page(), `${ctx.prefix}-created`);

    expect(problems(qemuCheck(target))).toEqual(CLEAN);
    const info = qemuInfo(target) as { 'virtual-size': number; 'cluster-size': number; 'format-specific': { data: Record<string, unknown> } };
    expect(info['virtual-size']).toBe(64 * MiB);
    expect(info['cluster-size']).toBe(4096);
    expect(info['format-specific'].data['lazy-refcounts']).toBe(true);
    expect(info['format-specific'].data.compat).toBe('1.1');
  });

  it('converts raw to qcow2 through the wizard: pre-flight, progress, a checked result', async () => {
    const source = ctx.tmp.path('src.raw');
    const target = ctx.tmp.path('out.qcow2');
    sh('qemu-img', ['create', '-f', 'raw', source, '256M']);
    qemuIo(source, ['write -P 0x11 0 64M', 'write -P 0x22 128M 64M'], 'raw');
    await ctx.page().getByRole('button', { name: 'Convert' }).click();
    await ctx.page().getByLabel('Source images').fill(source);
    await ctx.page().getByLabel('Target path').fill(target);
    await ctx.page().getByLabel('Target format').selectOption('qcow2');
    await ctx.page().getByRole('button', { name: 'Next' }).click();
    await ctx.page().getByTestId('required').waitFor();
    await screenshot(ctx.page(), `${ctx.prefix}-convert-preflight`);
    await ctx.page().getByRole('button', { name: 'Start convert' }).click();
    await ctx.page().getByRole('heading', { name: /^Convert(ing to| finished)/ }).waitFor();
    if (await ctx.page().locator('#convert-progress').isVisible()) await screenshot(ctx.page(), `${ctx.prefix}-convert-progress`);
    await ctx.page().getByRole('heading', { name: 'Convert finished' }).waitFor({ timeout: 60_000 });
    await expect.poll(() => ctx.page().getByTestId('check-result').textContent(), { timeout: 30_000 }).toContain('No errors were found');
    await screenshot(ctx.page(), `${ctx.prefix}-convert-done`);
    expect(qemuCompare(source, target)).toBe('Images are identical.');
    expect(problems(qemuCheck(target))).toEqual(CLEAN);

    await ctx.page().getByRole('button', { name: /^Jobs/ }).click();
    await ctx.page().getByTestId('jobs-table').getByText(target).waitFor();
    await expect.poll(() => ctx.page().getByTestId('jobs-table').textContent()).toContain('done');
    await screenshot(ctx.page(), `${ctx.prefix}-jobs`);
  });

  // Every source format with a driver: qcow2 (with a backing file, compressed and zero clusters) to raw.
  it('converts a qcow2 chain to raw through the wizard', async () => {
    const base = ctx.tmp.path('chain-base.qcow2');
    const top = ctx.tmp.path('chain-top.qcow2');
    const target = ctx.tmp.path('chain.raw');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', base, '32M']);
    qemuIo(base, ['write -P 0x31 0 8M', 'write -c -P 0x32 16M 1M']);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    qemuIo(top, ['write -P 0x33 4M 2M', 'write -z 6M 1M']);
    await ctx.page().getByRole('button', { name: 'Convert' }).click();
    const again = ctx.page().getByRole('button', { name: 'Convert another' });
    if (await again.isVisible()) await again.click();
    await ctx.page().getByLabel('Source images').fill(top);
    await ctx.page().getByLabel('Target path').fill(target);
    await ctx.page().getByLabel('Target format').selectOption('raw');
    await ctx.page().getByRole('button', { name: 'Next' }).click();
    await ctx.page().getByRole('button', { name: 'Start convert' }).click();
    await ctx.page().getByRole('heading', { name: 'Convert finished' }).waitFor({ timeout: 60_000 });
    expect(qemuCompare(top, target)).toBe('Images are identical.');
    await ctx.page().getByRole('button', { name: /^Jobs/ }).click();
    await ctx.page().getByTestId('jobs-table').getByText(target).waitFor();
  });

  it('cancels a long convert and leaves no target', async () => {
    const source = ctx.tmp.path('big.raw');
    const target = ctx.tmp.path('big.qcow2');
    sh('qemu-img', ['create', '-f', 'raw', source, '2G']);
    // qemu-io caps one request below 2 GiB.
    qemuIo(source, ['write -P 0x5a 0 1G', 'write -P 0x5b 1G 1G'], 'raw');
    await ctx.page().getByRole('button', { name: 'Convert' }).click();
    const again = ctx.page().getByRole('button', { name: 'Convert another' });
    if (await again.isVisible()) await again.click();
    await ctx.page().getByLabel('Source images').fill(source);
    await ctx.page().getByLabel('Target path').fill(target);
    await ctx.page().getByLabel('Target format').selectOption('qcow2');
    // Compressing 2 GiB takes long enough to cancel part way.
    await ctx.page().getByLabel('Compress', { exact: true }).check();
    await ctx.page().getByRole('button', { name: 'Next' }).click();
    await ctx.page().getByRole('button', { name: 'Start convert' }).click();
    await ctx.page().getByRole('heading', { name: /^Converting to/ }).waitFor();
    await screenshot(ctx.page(), `${ctx.prefix}-convert-running`);
    await ctx.page().getByRole('button', { name: 'Cancel' }).click();
    await ctx.page().getByRole('heading', { name: 'Convert cancelled' }).waitFor({ timeout: 30_000 });
    await screenshot(ctx.page(), `${ctx.prefix}-convert-cancelled`);
    expect(existsSync(target)).toBe(false);
  });

  it.skipIf(!canLoop)('lists the drives, and sees a loop device come and go', async () => {
    const img = ctx.tmp.path('drive.img');
    sh('truncate', ['-s', '16M', img]);
    await ctx.page().getByRole('button', { name: 'Devices' }).click();
    await ctx.page().getByRole('heading', { name: 'Devices' }).waitFor();
    const dev = sh('losetup', ['-f', '--show', '-r', img]).trim();
    try {
      // Arrives as a `devices` event (the host looks every 2 s).
      await ctx.page().getByTestId('devices-table').getByText(dev, { exact: true }).waitFor({ timeout: 10_000 });
      await expect.poll(() => ctx.page().getByTestId('devices-table').textContent()).toContain(`file ${img}`);
      await screenshot(ctx.page(), `${ctx.prefix}-devices`);
    } finally {
      sh('losetup', ['-d', dev]);
    }
    await ctx.page().getByTestId('devices-table').getByText(dev, { exact: true }).waitFor({ state: 'detached', timeout: 10_000 });
  });

  it.each(['light', 'dark'] as const)('has no serious or critical axe violations (%s)', async (scheme) => {
    await ctx.page().emulateMedia({ colorScheme: scheme });
    for (const name of ['Devices', 'Jobs', 'Create', 'Convert']) {
      await ctx.page().getByRole('button', { name: new RegExp(`^${name}`) }).first().click();
      expect(await seriousA11yViolations(ctx.page()), `${name} (${scheme})`).toEqual([]);
    }
    await ctx.page().getByRole('button', { name: 'new.qcow2' }).click();
    await ctx.page().getByTestId('map-canvas').waitFor();
    expect(await seriousA11yViolations(ctx.page()), `inspector (${scheme})`).toEqual([]);
    await screenshot(ctx.page(), `${ctx.prefix}-inspector-${scheme}`);
  });
}
