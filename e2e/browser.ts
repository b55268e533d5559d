/**
 * Shared by the browser tests: Debian's Chromium through playwright-core,
 * screenshots under e2e/artifacts/, and an axe-core scan.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { hasTool } from '../core/test/tmp.js';

export const CHROMIUM = '/usr/bin/chromium';
export const root = fileURLToPath(new URL('..', import.meta.url));
export const artifacts = fileURLToPath(new URL('./artifacts/', import.meta.url));

/** Whether Chromium is there; says loudly why the browser tests skip when it is not. */
export const hasChromium = () => hasTool(CHROMIUM, 'apt-get install chromium');

export async function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: `${artifacts}${name}.png`, fullPage: true });
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/** axe-core's serious and critical violations on the page, one line each. */
export async function seriousA11yViolations(page: Page): Promise<string[]> {
  // Evaluated through the DevTools protocol, so the page's CSP (script-src 'self') does not apply.
  await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const axe = (globalThis as unknown as { axe: { run: () => Promise<{ violations: { id: string; impact?: string; help: string; nodes: { target: unknown }[] }[] }> } }).axe;
    const r = await axe.run();
    return r.violations.map((v) => ({ id: v.id, impact: v.impact ?? '', help: v.help, targets: v.nodes.map((n) => JSON.stringify(n.target)) }));
  });
  return violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.impact} ${v.id}: ${v.help} at ${v.targets.join(', ')}`);
}

/** Whether a canvas has drawn anything but one colour. */
export async function canvasHasColours(page: Page, selector: string): Promise<number> {
  return page.$eval(selector, (el) => {
    const c = el as HTMLCanvasElement;
    const data = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set<number>();
    for (let i = 0; i < data.length; i += 4) seen.add((data[i]! << 16) | (data[i + 1]! << 8) | data[i + 2]!);
    return seen.size;
  });
}
