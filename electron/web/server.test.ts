/** The web host: only our own page, with the token, may call; calls and events cross as the protocol says. */
import { request } from 'node:http';
import { mkdirSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { tempDir } from '../../core/test/tmp.js';
import type { JobInfo } from '../ipc/contract.js';
import { createHandlers, noDialogs } from '../ipc/handlers.js';
import { startWebHost, type WebHost } from './server.js';

let t: ReturnType<typeof tempDir>;
let host: WebHost;
const sockets: WebSocket[] = [];

beforeEach(async () => {
  t = tempDir();
  mkdirSync(t.path('renderer'));
  writeFileSync(t.path('renderer/index.html'), '<!doctype html><title>Platter</title>');
  writeFileSync(t.path('secret.txt'), 'not for the browser');
  const jobs = { startConvert: () => 'j', cancel: () => false, list: () => [] };
  host = await startWebHost({ handlers: createHandlers({ jobs, ...noDialogs }), rendererDir: t.path('renderer') });
});
afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await host.close();
  t.cleanup();
});

const origin = () => `http://127.0.0.1:${host.port}`;

function connect(query = `?token=${host.token}`, headers: Record<string, string> = { Origin: origin() }): WebSocket {
  const ws = new WebSocket(`ws://127.0.0.1:${host.port}/ws${query}`, { headers });
  ws.on('error', () => undefined); // refusals are checked through ending()
  sockets.push(ws);
  return ws;
}

/** How the socket ended: the close code, or the HTTP status that refused the handshake. */
function ending(ws: WebSocket): Promise<{ code?: number; status?: number }> {
  return new Promise((resolve) => {
    ws.on('unexpected-response', (_req, res) => resolve({ status: res.statusCode }));
    ws.on('close', (code) => resolve({ code }));
  });
}

const opened = (ws: WebSocket) => new Promise<void>((resolve, reject) => (ws.on('open', resolve), ws.on('error', reject)));

/** Collects parsed messages; `next(pred)` waits for the first matching one. */
function inbox(ws: WebSocket) {
  const seen: Record<string, unknown>[] = [];
  const waiters: { pred: (m: Record<string, unknown>) => boolean; resolve: (m: Record<string, unknown>) => void }[] = [];
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString()) as Record<string, unknown>;
    seen.push(m);
    for (const w of waiters.filter((w) => w.pred(m))) (waiters.splice(waiters.indexOf(w), 1), w.resolve(m));
  });
  return {
    seen,
    next: (pred: (m: Record<string, unknown>) => boolean) =>
      new Promise<Record<string, unknown>>((resolve) => {
        const m = seen.find(pred);
        if (m) resolve(m);
        else waiters.push({ pred, resolve });
      }),
  };
}

function get(pathname: string, hostHeader = `127.0.0.1:${host.port}`): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: host.port, path: pathname, headers: { Host: hostHeader } }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const job: JobInfo = {
  id: 'j1',
  kind: 'convert',
  title: 't',
  target: '/x',
  state: 'running',
  done: 5,
  total: 10,
  bytesPerSecond: 1,
  startedAt: 1,
};

describe('web host', () => {
  it('serves the renderer on 127.0.0.1, with the token in the URL fragment', async () => {
    expect(host.url).toBe(`${origin()}/#token=${host.token}`);
    expect(host.token).toMatch(/^[0-9a-f]{64}$/);
    expect(await get('/')).toMatchObject({ status: 200, body: expect.stringContaining('<title>Platter</title>') });
    expect((await get('/../secret.txt')).status).toBe(404);
    expect((await get('/%2e%2e/secret.txt')).status).toBe(404);
    expect((await get('/', `evil.example:${host.port}`)).status).toBe(403);
  });

  it('a method call works, and malformed input is refused', async () => {
    const ws = connect();
    const box = inbox(ws);
    await opened(ws);
    ws.send(JSON.stringify({ id: 1, method: 'formats', input: {} }));
    ws.send(JSON.stringify({ id: 'b', method: 'create', input: { path: t.path('x.img'), format: 'BAD!', size: 1, options: {} } }));
    const formats = await box.next((m) => m.id === 1);
    expect(formats.ok).toBe(true);
    expect((formats.output as { name: string }[]).map((f) => f.name)).toContain('qcow2');
    expect(await box.next((m) => m.id === 'b')).toMatchObject({ ok: false, error: { kind: 'Validation' } });
  });

  it('the token may come as the first message instead', async () => {
    const ws = connect('');
    const box = inbox(ws);
    await opened(ws);
    ws.send(JSON.stringify({ token: host.token }));
    ws.send(JSON.stringify({ id: 7, method: 'listJobs', input: {} }));
    expect(await box.next((m) => m.id === 7)).toEqual({ id: 7, ok: true, output: [] });
  });

  it('without the right token the socket is closed and nothing is answered', async () => {
    const none = connect('');
    const noneBox = inbox(none);
    await opened(none);
    none.send(JSON.stringify({ id: 1, method: 'formats', input: {} }));
    expect(await ending(none)).toEqual({ code: 1008 });
    expect(noneBox.seen).toEqual([]);

    const wrong = connect(`?token=${'0'.repeat(64)}`);
    expect(await ending(wrong)).toEqual({ code: 1008 });
  });

  it('a page of another origin (or none) cannot connect, even with the token', async () => {
    expect(await ending(connect(undefined, { Origin: 'http://evil.example' }))).toEqual({ status: 403 });
    expect(await ending(connect(undefined, { Origin: `http://localhost:${host.port}` }))).toEqual({ status: 403 });
    expect(await ending(connect(undefined, {}))).toEqual({ status: 403 });
  });

  it('events reach authenticated sockets only', async () => {
    const ws = connect();
    const box = inbox(ws);
    await opened(ws);
    const stranger = connect('');
    const strangerBox = inbox(stranger);
    await opened(stranger);
    host.publish('job', job);
    expect(await box.next((m) => m.event === 'job')).toEqual({ event: 'job', payload: job });
    expect(strangerBox.seen).toEqual([]);
  });
});
