/**
 * Electronegativity (Doyensec's Electron security linter) over the app's
 * sources: no high or medium finding, except the ones reviewed below, each
 * with the reason it is accepted. A new finding fails the test.
 *
 * The check that downloads Electron's release list is left out (no network
 * in CI); the Electron version comes from package.json.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../core/test/tmp.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const require = createRequire(import.meta.url);

/** Accepted findings: `issue@file`, and why. */
const REVIEWED: Record<string, string> = {
  // Electronegativity asks for a review of every preload. Ours runs sandboxed
  // with context isolation, imports only electron and the contract's method
  // names, and exposes exactly those methods (electron/preload.ts;
  // electron/ipc/raw-ipc.test.ts keeps raw IPC out of everything else).
  'PRELOAD_JS_CHECK@electron/main.ts': 'the preload is the typed bridge, reviewed',
};

const t = tempDir('platter-electronegativity-');
afterAll(() => t.cleanup());

describe('electronegativity', () => {
  it('reports no high or medium finding beyond the reviewed ones', () => {
    for (const dir of ['electron', 'renderer']) cpSync(join(root, dir), t.path(dir), { recursive: true });
    const version = JSON.parse(readFileSync(join(root, 'node_modules/electron/package.json'), 'utf8')).version as string;
    const cli = require.resolve('@doyensec/electronegativity/dist/index.js');
    const csv = t.path('findings.csv');
    const r = spawnSync(
      process.execPath,
      [cli, '-i', t.dir, '-e', version, '-x', 'AvailableSecurityFixesGlobalCheck', '-r', '-v', 'false', '-o', csv],
      { encoding: 'utf8', cwd: t.dir, timeout: 120_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    const rows = readFileSync(csv, 'utf8').trim().split('\n').slice(1);
    expect(rows.length).toBeGreaterThan(0); // the preload finding at least: the scan did run
    const serious = rows
      .map((row) => row.split(','))
      .filter(([, severity]) => severity === '"HIGH"' || severity === '"MEDIUM"')
      .map(([issue, , , file]) => `${issue}@${file.replace(/"/g, '')}`);
    expect(serious.filter((f) => !REVIEWED[f])).toEqual([]);
  }, 120_000);
});
