// Static guards for the renderer's lock-down (see ARCHITECTURE.md, "Security
// principles"). They read the sources, so a change that weakens the window
// fails here even on machines without Electron's binary. They also check the
// build output that `npm test` produces before running the tests.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const read = (rel: string) => readFileSync(root + rel, 'utf8');

function parse(rel: string): ts.SourceFile {
  return ts.createSourceFile(rel, read(rel), ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
}

function walk(node: ts.Node, visit: (n: ts.Node) => void): void {
  visit(node);
  node.forEachChild((child) => walk(child, visit));
}

function findAll<T extends ts.Node>(node: ts.Node, guard: (n: ts.Node) => n is T): T[] {
  const out: T[] = [];
  walk(node, (n) => {
    if (guard(n)) out.push(n);
  });
  return out;
}

function propName(p: ts.ObjectLiteralElementLike): string | undefined {
  return p.name && (ts.isIdentifier(p.name) || ts.isStringLiteral(p.name)) ? p.name.text : undefined;
}

/** The properties of an object literal as name -> initializer source text. */
function props(obj: ts.ObjectLiteralExpression): Map<string, string> {
  const m = new Map<string, string>();
  for (const p of obj.properties) {
    const name = propName(p);
    if (name && ts.isPropertyAssignment(p)) m.set(name, p.initializer.getText());
    else if (name && ts.isShorthandPropertyAssignment(p)) m.set(name, name);
  }
  return m;
}

/** Calls of the form `<anything>.<method>(...)`. */
function methodCalls(sf: ts.SourceFile, method: string): ts.CallExpression[] {
  return findAll(sf, ts.isCallExpression).filter(
    (c) => ts.isPropertyAccessExpression(c.expression) && c.expression.name.text === method,
  );
}

/** `<x>.on('<event>', handler)` calls. */
function eventHandlers(sf: ts.SourceFile, event: string): ts.CallExpression[] {
  return methodCalls(sf, 'on').filter((c) => {
    const [first] = c.arguments;
    return first !== undefined && ts.isStringLiteral(first) && first.text === event;
  });
}

const callsPreventDefault = (node: ts.Node) =>
  findAll(node, ts.isCallExpression).some(
    (c) => ts.isPropertyAccessExpression(c.expression) && c.expression.name.text === 'preventDefault',
  );

describe('electron/main.ts keeps the renderer locked down', () => {
  const main = parse('electron/main.ts');

  const windows = findAll(main, ts.isNewExpression).filter((n) => n.expression.getText() === 'BrowserWindow');
  /** Each window's webPreferences as name -> source text. */
  function webPreferences(): Map<string, string>[] {
    return windows.map((w) => {
      const [options] = w.arguments ?? [];
      if (!options || !ts.isObjectLiteralExpression(options)) throw new Error('BrowserWindow options must be an object literal');
      const wp = options.properties.find((p) => propName(p) === 'webPreferences');
      if (!wp || !ts.isPropertyAssignment(wp) || !ts.isObjectLiteralExpression(wp.initializer)) {
        throw new Error('webPreferences must be an object literal in the BrowserWindow options');
      }
      return props(wp.initializer);
    });
  }

  it('creates at least one BrowserWindow', () => {
    expect(windows.length).toBeGreaterThan(0);
  });

  it('every window: contextIsolation true, sandbox true, nodeIntegration false, webSecurity on', () => {
    for (const wp of webPreferences()) {
      expect(wp.get('contextIsolation')).toBe('true');
      expect(wp.get('sandbox')).toBe('true');
      expect(wp.get('nodeIntegration')).toBe('false');
      expect(['true', undefined]).toContain(wp.get('webSecurity'));
      for (const risky of ['nodeIntegrationInWorker', 'nodeIntegrationInSubFrames', 'allowRunningInsecureContent', 'webviewTag', 'experimentalFeatures']) {
        expect(['false', undefined], risky).toContain(wp.get(risky));
      }
    }
  });

  it('denies window.open via setWindowOpenHandler', () => {
    const calls = methodCalls(main, 'setWindowOpenHandler');
    expect(calls.length).toBeGreaterThan(0);
    for (const call of calls) {
      const actions = findAll(call, ts.isObjectLiteralExpression)
        .map((o) => props(o).get('action'))
        .filter((a) => a !== undefined);
      expect(actions.length).toBeGreaterThan(0);
      for (const a of actions) expect(a).toBe("'deny'");
    }
  });

  it('blocks navigation with a will-navigate handler that calls preventDefault', () => {
    const handlers = eventHandlers(main, 'will-navigate');
    expect(handlers.length).toBeGreaterThan(0);
    for (const h of handlers) expect(callsPreventDefault(h)).toBe(true);
  });

  it('denies permission requests', () => {
    const calls = methodCalls(main, 'setPermissionRequestHandler');
    expect(calls.length).toBeGreaterThan(0);
    for (const call of calls) {
      const text = call.getText();
      expect(text).toMatch(/\(\s*false\s*\)/);
      expect(text).not.toMatch(/\btrue\b/);
    }
  });

  it('takes the single-instance lock', () => {
    expect(methodCalls(main, 'requestSingleInstanceLock').length).toBeGreaterThan(0);
  });
});

describe('electron/preload.ts stays sandbox-compatible', () => {
  const importsOf = (sf: ts.SourceFile) => findAll(sf, ts.isImportDeclaration).map((d) => (d.moduleSpecifier as ts.StringLiteral).text);
  const requiresOf = (sf: ts.SourceFile) => findAll(sf, ts.isCallExpression).filter((c) => c.expression.getText() === 'require');

  it('imports nothing but electron and the method names, which import nothing', () => {
    const preload = parse('electron/preload.ts');
    expect(importsOf(preload)).toEqual(['electron', './ipc/methods.js']);
    expect(requiresOf(preload)).toEqual([]);
    const methods = parse('electron/ipc/methods.ts');
    expect(importsOf(methods)).toEqual([]);
    expect(requiresOf(methods)).toEqual([]);
  });

  it('exposes one object, window.platter', () => {
    const calls = methodCalls(parse('electron/preload.ts'), 'exposeInMainWorld');
    expect(calls.map((c) => c.arguments[0]?.getText())).toEqual(["'platter'"]);
  });
});

/** CSP directives of the first Content-Security-Policy meta tag. */
function csp(html: string): Map<string, string[]> {
  const meta = /<meta\s+http-equiv="Content-Security-Policy"\s+content="([^"]*)"/i.exec(html);
  expect(meta, 'no Content-Security-Policy meta tag').not.toBeNull();
  const m = new Map<string, string[]>();
  for (const part of meta![1]!.split(';')) {
    const [name, ...values] = part.trim().split(/\s+/);
    if (name) m.set(name, values);
  }
  return m;
}

function expectStrictCsp(html: string): void {
  const policy = csp(html);
  expect(policy.get('default-src')).toEqual(["'self'"]);
  expect(policy.get('script-src')).toEqual(["'self'"]);
  expect(policy.get('object-src')).toEqual(["'none'"]);
  expect(policy.get('base-uri')).toEqual(["'none'"]);
  const all = [...policy.values()].flat();
  for (const bad of ["'unsafe-eval'", "'unsafe-inline'", "'wasm-unsafe-eval'", '*', 'http:', 'https:']) {
    expect(all).not.toContain(bad);
  }
}

describe('renderer CSP', () => {
  it('renderer/index.html has a strict CSP', () => {
    expectStrictCsp(read('renderer/index.html'));
  });
});

describe('build output', () => {
  const built = ['dist/electron/main.cjs', 'dist/electron/preload.cjs', 'dist/renderer/index.html'];

  it.each(built)('%s exists (run `npm run build` first)', (rel) => {
    expect(existsSync(root + rel), `${rel} is missing: run \`npm run build\``).toBe(true);
  });

  it('built index.html keeps the CSP, has no inline script or style, and uses relative URLs', () => {
    const html = read('dist/renderer/index.html');
    expectStrictCsp(html);
    const scripts = [...html.matchAll(/<script\b([^>]*)>/gi)];
    expect(scripts.length).toBeGreaterThan(0);
    for (const [, attrs] of scripts) expect(attrs).toMatch(/\bsrc="/);
    expect(html).not.toMatch(/<style\b/i);
    expect(html).not.toMatch(/\sstyle="/i);
    for (const [, url] of html.matchAll(/\s(?:src|href)="([^"]*)"/gi)) expect(url).toMatch(/^\.\//);
  });

  it('built preload requires only electron', () => {
    const code = read('dist/electron/preload.cjs');
    const required = [...code.matchAll(/\brequire\(\s*["']([^"']+)["']\s*\)/g)].map((m) => m[1]);
    expect(new Set(required)).toEqual(new Set(['electron']));
  });
});
