/**
 * Raw ipcMain / ipcRenderer stay in two files: main-bridge.ts (which checks
 * every sender and serves only the contract's methods) and the preload. Any
 * other use would be a channel around the contract's validation.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const ALLOWED = new Set(['electron/ipc/main-bridge.ts', 'electron/preload.ts']);
const RAW = new Set(['ipcMain', 'ipcRenderer']);
const SOURCE = /\.(ts|tsx|mts|cts|js|mjs|cjs|jsx)$/;

/** Every source file of the project's own folders, as paths relative to the root. */
function sources(dir: string): string[] {
  return readdirSync(path.join(root, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = path.posix.join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : sources(rel);
    return SOURCE.test(e.name) ? [rel] : [];
  });
}

/** Identifiers named ipcMain/ipcRenderer (imports, uses, `electron.ipcMain`); comments don't count. */
function rawUses(rel: string): string[] {
  const sf = ts.createSourceFile(rel, readFileSync(path.join(root, rel), 'utf8'), ts.ScriptTarget.Latest, true);
  const found: string[] = [];
  const visit = (n: ts.Node) => {
    if (ts.isIdentifier(n) && RAW.has(n.text)) found.push(`${rel}:${sf.getLineAndCharacterOfPosition(n.getStart()).line + 1} ${n.text}`);
    // electron['ipcMain'] is the same thing spelt differently.
    if (ts.isElementAccessExpression(n) && ts.isStringLiteral(n.argumentExpression) && RAW.has(n.argumentExpression.text)) {
      found.push(`${rel}:${sf.getLineAndCharacterOfPosition(n.getStart()).line + 1} ${n.argumentExpression.text}`);
    }
    n.forEachChild(visit);
  };
  visit(sf);
  return found;
}

describe('raw IPC', () => {
  const files = ['core', 'electron', 'renderer', 'e2e', 'scripts'].flatMap(sources);

  it('finds the sources, and the two allowed files do use raw IPC', () => {
    expect(files.length).toBeGreaterThan(50);
    for (const rel of ALLOWED) expect(rawUses(rel).length, rel).toBeGreaterThan(0);
  });

  it('is used nowhere else', () => {
    expect(files.filter((f) => !ALLOWED.has(f)).flatMap(rawUses)).toEqual([]);
  });
});
