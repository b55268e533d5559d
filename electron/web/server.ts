/**
 * The web host: the same handlers as Electron's main process, served to a
 * browser on this machine (headless hosts, Playwright tests).
 *
 * HTTP on 127.0.0.1:PORT serves the built renderer (dist/renderer). The page
 * is opened as http://127.0.0.1:PORT/#token=TOKEN: TOKEN is 32 random bytes
 * in hex, made at start, and only whoever was given the URL knows it.
 *
 * Wire protocol, WebSocket at ws://127.0.0.1:PORT/ws:
 * - The handshake must carry the header `Origin: http://127.0.0.1:PORT` (this
 *   server's own origin), else it is refused (HTTP 403): other web pages the
 *   user has open cannot drive the engine.
 * - The token comes either in the query (`/ws?token=TOKEN`) or as the first
 *   message `{"token": "TOKEN"}`; a wrong or missing token closes the socket
 *   (code 1008), and so does silence for 10 s.
 * - Calls, all JSON text frames: `{"id", "method", "input"}` -> the answer
 *   `{"id", "ok": true, "output"}` or `{"id", "ok": false, "error": {"kind",
 *   "message"}}`; `id` is the caller's (a string or number), answers may come
 *   in any order. Methods, inputs and outputs are electron/ipc/contract.ts's.
 * - Events pushed to every authenticated socket: `{"event", "payload"}`,
 *   e.g. `{"event": "job", "payload": JobInfo}`.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { WebSocketServer, type WebSocket } from 'ws';
import type { EventName, EventPayload } from '../ipc/contract.js';
import type { Handlers } from '../ipc/handlers.js';

export interface WebHostOptions {
  handlers: Handlers;
  /** The built renderer's folder (dist/renderer). */
  rendererDir: string;
  /** 0 (the default) picks a free port. */
  port?: number;
}

export interface WebHost {
  /** The page to open, token included. */
  url: string;
  port: number;
  token: string;
  /** Pushes an event to every authenticated socket. */
  publish<E extends EventName>(event: E, payload: EventPayload<E>): void;
  close(): Promise<void>;
}

/** Largest call accepted: inputs are paths and options, a few KiB at most. */
const MAX_MESSAGE = 1 << 20;
/** A socket must authenticate within this time. */
const AUTH_TIMEOUT_MS = 10_000;
/** WebSocket close code for "policy violation". */
const POLICY_VIOLATION = 1008;

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.woff2': 'font/woff2',
  '.map': 'application/json',
};

/** Constant-time comparison, whatever the lengths. */
function sameSecret(given: unknown, token: string): boolean {
  if (typeof given !== 'string') return false;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(given), digest(token));
}

export async function startWebHost(opts: WebHostOptions): Promise<WebHost> {
  const token = randomBytes(32).toString('hex');
  const root = path.resolve(opts.rendererDir);
  let origin = '';
  let host = '';

  async function serveFile(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const send = (status: number, body: string | Buffer, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'Content-Type': type, 'X-Content-Type-Options': 'nosniff', 'Cache-Control': 'no-store' });
      res.end(body);
    };
    // A DNS-rebound name would reach us with another Host: only our own is served.
    if (req.headers.host !== host) return send(403, 'forbidden\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n');
    let rel: string;
    try {
      rel = decodeURIComponent(new URL(req.url ?? '/', origin).pathname);
    } catch {
      return send(400, 'bad request\n');
    }
    if (rel.endsWith('/')) rel += 'index.html';
    const file = path.resolve(root, '.' + rel);
    if (rel.includes('\0') || !file.startsWith(root + path.sep)) return send(404, 'not found\n');
    try {
      send(200, await readFile(file), CONTENT_TYPES[path.extname(file)] ?? 'application/octet-stream');
    } catch {
      send(404, 'not found\n');
    }
  }

  const server = createServer((req, res) => void serveFile(req, res));
  const wss = new WebSocketServer({
    server,
    path: '/ws',
    maxPayload: MAX_MESSAGE,
    verifyClient: ({ req }: { req: IncomingMessage }, done: (ok: boolean, status?: number) => void) =>
      done(req.headers.origin === origin && req.headers.host === host, 403),
  });
  const authed = new Set<WebSocket>();

  wss.on('connection', (ws, req) => {
    const reject = () => ws.close(POLICY_VIOLATION, 'a valid token is required');
    const accept = () => {
      clearTimeout(timer);
      authed.add(ws);
    };
    const timer = setTimeout(reject, AUTH_TIMEOUT_MS);
    // A malformed frame (or an oversized one) must end that socket, not the host.
    ws.on('error', () => ws.terminate());
    ws.on('close', () => {
      clearTimeout(timer);
      authed.delete(ws);
    });
    const queryToken = new URL(req.url ?? '/', origin).searchParams.get('token');
    if (queryToken !== null) {
      if (!sameSecret(queryToken, token)) return reject();
      accept();
    }
    ws.on('message', (data, isBinary) => {
      let msg: unknown;
      try {
        msg = isBinary ? undefined : JSON.parse(data.toString());
      } catch {
        msg = undefined;
      }
      const m = (typeof msg === 'object' && msg !== null ? msg : {}) as Record<string, unknown>;
      if (!authed.has(ws)) {
        if (!sameSecret(m.token, token)) return reject();
        return accept();
      }
      const id = typeof m.id === 'string' || typeof m.id === 'number' ? m.id : null;
      if (id === null || typeof m.method !== 'string') {
        const error = { kind: 'Validation', message: 'message: expected {id, method, input}' };
        return ws.send(JSON.stringify({ id, ok: false, error }));
      }
      void opts.handlers.call(m.method, m.input).then((reply) => {
        if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ id, ...reply }));
      });
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  host = `127.0.0.1:${port}`;
  origin = `http://${host}`;

  return {
    url: `${origin}/#token=${token}`,
    port,
    token,
    publish(event, payload) {
      const text = JSON.stringify({ event, payload });
      for (const ws of authed) if (ws.readyState === ws.OPEN) ws.send(text);
    },
    async close() {
      for (const ws of wss.clients) ws.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
