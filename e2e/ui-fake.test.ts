// The built renderer in Chromium over an in-page fake of the Electron bridge
// (window.platter): checks the screens that need no engine (generated option
// forms, the map canvas and its tooltip, keyboard use, accessibility in both
// colour schemes) without waiting for the web host. The real engine is
// exercised by web.test.ts.
import { createServer, type Server } from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import { extname, join, normalize } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canvasHasColours, hasChromium, launch, root, screenshot, seriousA11yViolations } from './browser.js';

const dist = join(root, 'dist/renderer');
const built = existsSync(join(dist, 'index.html'));
if (!built) console.warn('SKIPPED renderer browser tests: dist/renderer is missing (run node scripts/build.mjs)');
const run = hasChromium() && built;

const TYPES: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };

/** Serves dist/renderer as-is (its index.html carries the CSP). */
function serveRenderer(): Promise<Server> {
  const server = createServer((req, res) => {
    const rel = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    // Chromium asks for an icon the app does not have.
    if (rel === '/favicon.ico') return void res.writeHead(204).end();
    const file = join(dist, rel === '/' ? 'index.html' : rel);
    if (!file.startsWith(dist) || !existsSync(file)) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** Runs in the page before the app: a PlatterApi with canned answers (qcow2's real option declarations, in short). */
function installFakeBridge() {
  const GiB = 2 ** 30;
  const extents: Record<string, unknown>[] = [];
  // 2 TiB in 16384 extents of 128 MiB: a compressed stretch, a backing stretch, then data and zero alternating.
  const n = 16384;
  const len = (2048 * GiB) / n;
  for (let i = 0; i < n; i++) {
    const kind = i < 2000 ? 'c' : i < 4000 ? 'b' : i % 2 ? 'z' : 'd';
    extents.push({ start: i * len, length: len, depth: kind === 'b' ? 1 : 0, present: true, zero: kind === 'z', data: kind !== 'z',
      compressed: kind === 'c', ...(kind === 'd' ? { offset: i * len } : {}) });
  }
  const listeners: ((j: unknown) => void)[] = [];
  const qcow2Options = [
    { name: 'size', type: 'size', help: 'Virtual disk size', min: 0 },
    { name: 'compat', type: 'enum', values: ['0.10', '1.1'], default: '1.1', help: 'Compatibility level' },
    { name: 'lazy_refcounts', type: 'bool', default: false, help: 'Postpone refcount updates', requires: [{ option: 'compat', value: '1.1' }] },
    { name: 'cluster_size', type: 'size', default: 65536, min: 512, max: 2097152, powerOfTwo: true, help: 'qcow2 cluster size' },
    { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  ];
  const w = window as unknown as { platter: unknown; fakeCalls: unknown[] };
  w.fakeCalls = [];
  const api: Record<string, (input: unknown) => Promise<unknown>> = {
    formats: async () => [
      { name: 'qcow2', description: 'QEMU copy-on-write v2', canCreate: true, createOptions: qcow2Options },
      { name: 'raw', description: 'Raw disk image', canCreate: true, createOptions: [] },
    ],
    info: async (input) => [{
      filename: (input as { path: string }).path, format: 'qcow2', 'virtual-size': 2048 * GiB, 'actual-size': 5 * GiB, 'cluster-size': 65536,
      'dirty-flag': false, 'backing-filename': 'base.qcow2',
      'format-specific': { type: 'qcow2', data: { compat: '1.1', 'lazy-refcounts': false, 'refcount-bits': 16, corrupt: false } },
      snapshots: [{ id: '1', name: 'before-upgrade', 'vm-state-size': 0, 'date-sec': 1700000000, 'vm-clock-nsec': 0 }],
    }, { filename: 'base.qcow2', format: 'qcow2', 'virtual-size': 2048 * GiB, 'dirty-flag': false }],
    map: async () => extents,
    measure: async () => ({ required: 3 * GiB, fullyAllocated: 10 * GiB }),
    freeSpace: async () => ({ bytes: 2 * GiB }),
    create: async (input) => (w.fakeCalls.push(['create', input]), { path: (input as { path: string }).path }),
    check: async () => ({ filename: 't', format: 'qcow2', corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0,
      imageEndOffset: 0, totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0, log: [] }),
    startConvert: async (input) => {
      w.fakeCalls.push(['startConvert', input]);
      const job = { id: 'j1', kind: 'convert', title: 'Convert to qcow2', target: (input as { target: string }).target, state: 'running',
        done: 0, total: 10 * GiB, bytesPerSecond: 0, startedAt: Date.now() };
      setTimeout(() => listeners.forEach((l) => l({ ...job, done: 4 * GiB, bytesPerSecond: 400 * 2 ** 20 })), 50);
      return { jobId: 'j1' };
    },
    cancelJob: async () => ({ cancelled: true }),
    listJobs: async () => [],
    openDialog: async () => ({ path: null }),
    saveDialog: async () => ({ path: null }),
  };
  w.platter = {
    ...api,
    on: (_e: string, l: (j: unknown) => void) => (listeners.push(l), () => undefined),
    // As the preload does with webUtils.getPathForFile.
    pathForFile: (f: File) => `/dropped/${f.name}`,
  };
}

describe.skipIf(!run)('renderer in Chromium (fake bridge)', () => {
  let server: Server;
  let browser: Browser;
  let page: Page;
  let url: string;

  beforeAll(async () => {
    server = await serveRenderer();
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    browser = await launch();
    page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    page.setDefaultTimeout(10_000);
    await page.addInitScript(installFakeBridge);
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    await page.goto(url);
    await page.getByRole('heading', { name: 'No image open' }).waitFor();
    expect(errors).toEqual([]);
  });

  afterAll(async () => {
    await browser?.close();
    await new Promise((r) => server?.close(r));
  });

  it('a file dropped on the window opens in the inspector', async () => {
    const dt = await page.evaluateHandle(() => {
      const d = new DataTransfer();
      d.items.add(new File(['x'], 'dropped.qcow2'));
      return d;
    });
    await page.dispatchEvent('.frame', 'drop', { dataTransfer: dt });
    await page.getByRole('heading', { name: '/dropped/dropped.qcow2' }).waitFor();
  });

  it('inspector: size, format-specific table, backing chain, snapshots, and a map with a hover tooltip', async () => {
    await page.getByLabel('Image path').fill('/images/big.qcow2');
    await page.getByRole('button', { name: 'Open', exact: true }).click();
    await expect.poll(() => page.getByTestId('virtual-size').textContent()).toContain('2 TiB');
    await page.getByText('before-upgrade').waitFor();
    await page.getByText('lazy-refcounts').waitFor();
    const canvas = page.getByTestId('map-canvas');
    await canvas.waitFor();
    expect(await canvasHasColours(page, '[data-testid=map-canvas]')).toBeGreaterThanOrEqual(3);
    await canvas.scrollIntoViewIfNeeded();
    const box = (await canvas.boundingBox())!;
    await page.mouse.move(box.x + 2, box.y + box.height / 2);
    await expect.poll(() => page.locator('.map-tooltip').textContent()).toContain('Compressed');
    await page.mouse.move(box.x + box.width * 0.15, box.y + box.height / 2);
    await expect.poll(() => page.locator('.map-tooltip').textContent()).toContain('backing depth 1');
    await screenshot(page, 'fake-inspector');
    // Keyboard: focus the map, End jumps to the last extent.
    await canvas.focus();
    await page.keyboard.press('End');
    await expect.poll(() => page.locator('.map-tooltip').textContent()).toMatch(/Zero|Data/);
  });

  it('create form: generated from the declarations, lazy_refcounts needs compat=1.1, bad sizes refused', async () => {
    await page.getByRole('button', { name: 'Create' }).click();
    const lazy = page.getByLabel('lazy_refcounts');
    await expect.poll(() => lazy.isEnabled()).toBe(true);
    await page.getByLabel('compat').selectOption('0.10');
    await expect.poll(() => lazy.isDisabled()).toBe(true);
    await page.getByText('Needs compat=1.1').waitFor();
    await page.getByLabel('compat').selectOption('1.1');
    await lazy.check();
    await page.getByLabel('cluster_size').fill('3000');
    await page.getByText('must be a power of two').waitFor();
    await page.getByLabel('cluster_size').fill('4K');
    await page.getByLabel('Path of the new image').fill('/images/new.qcow2');
    await page.getByLabel('Virtual size').fill('10G');
    await screenshot(page, 'fake-create');
    await page.getByRole('button', { name: 'Create', exact: true }).last().click();
    await expect.poll(() => page.getByTestId('virtual-size').textContent()).toContain('2 TiB');
    const calls = await page.evaluate(() => (window as unknown as { fakeCalls: unknown[] }).fakeCalls);
    expect(calls).toContainEqual(['create', { path: '/images/new.qcow2', format: 'qcow2', size: 10 * 2 ** 30, options: { lazy_refcounts: 'on', cluster_size: '4096' } }]);
  });

  it('convert: pre-flight warns when the target will not fit, then progress from job events', async () => {
    await page.getByRole('button', { name: 'Convert' }).click();
    await page.getByLabel('Source images').fill('/images/a.raw');
    await page.getByLabel('Target path').fill('/images/a.qcow2');
    await page.getByLabel('Compress', { exact: true }).check();
    await page.getByRole('button', { name: 'Next' }).click();
    await page.getByText('only 2 GiB is free there').waitFor();
    await screenshot(page, 'fake-convert-preflight');
    await page.getByRole('button', { name: 'Start convert' }).click();
    await expect.poll(() => page.getByTestId('progress-text').textContent()).toMatch(/40% .* 400 MiB\/s, 15 s left/);
    await screenshot(page, 'fake-convert-progress');
    await page.getByRole('button', { name: /^Jobs/ }).click();
    await page.getByTestId('jobs-table').getByText('Convert to qcow2').waitFor();
    await screenshot(page, 'fake-jobs');
  });

  it.each(['light', 'dark'] as const)('has no serious or critical axe violations (%s)', async (scheme) => {
    await page.emulateMedia({ colorScheme: scheme });
    for (const name of ['Jobs', 'Create', 'Convert']) {
      await page.getByRole('button', { name: new RegExp(`^${name}`) }).first().click();
      expect(await seriousA11yViolations(page), `${name} (${scheme})`).toEqual([]);
    }
    await page.getByRole('button', { name: 'big.qcow2' }).click();
    await page.getByTestId('map-canvas').waitFor();
    expect(await seriousA11yViolations(page), `inspector (${scheme})`).toEqual([]);
    await screenshot(page, `fake-inspector-${scheme}`);
  });
});
