/**
 * Electronegativity (Doyensec's Electron security linter) over the app's
 * sources: no high or medium finding. A finding reviewed and accepted is
 * marked where it is raised with the tool's own `eng-disable` comment and
 * the reason (one: the preload in electron/main.ts).
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

const t = tempDir('platter-electronegativity-');
afterAll(() => t.cleanup());

describe('electronegativity', () => {
  it('reports no high or medium finding', () => {
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
    const [header, ...rows] = readFileSync(csv, 'utf8').trim().split('\n');
    expect(header).toMatch(/^issue, severity/); // the scan ran and wrote its report
    const serious = rows
      .map((row) => row.split(','))
      .filter(([, severity]) => severity === '"HIGH"' || severity === '"MEDIUM"')
      .map(([issue, , , file, location]) => `${issue} at ${file.replace(/"/g, '')}:${location.replace(/"/g, '')}`);
    expect(serious).toEqual([]);
  }, 120_000);
});
