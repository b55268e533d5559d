/**
 * The renderer's one way to the engine: a PlatterApi whichever transport
 * carries it. Under Electron the preload exposes `window.platter`; in a plain
 * browser (the web host, e2e tests) a WebSocket to the page's own origin
 * speaks the web host's protocol. Either way every answer is checked against
 * the contract's output schemas before the UI sees it.
 */
import {
  ApiError,
  contract,
  events,
  type EventName,
  type MethodName,
  type PlatterApi,
} from '../electron/ipc/contract.js';

type Listener = (payload: unknown) => void;
type Call = (method: MethodName, input: unknown) => Promise<unknown>;

const METHODS = Object.keys(contract) as MethodName[];

/** Parses what came back with the method's output schema; a mismatch is the engine's bug, reported as such. */
function checkOutput(method: MethodName, output: unknown): unknown {
  const r = contract[method].output.safeParse(output);
  if (!r.success) throw new ApiError('Protocol', `${method}: unexpected answer from the engine (${r.error.issues[0]?.message ?? 'invalid'})`);
  return r.data;
}

/** A PlatterApi from a call function and an event subscription. */
function makeApi(call: Call, on: (event: EventName, listener: Listener) => () => void): PlatterApi {
  const api: Record<string, unknown> = { on };
  for (const m of METHODS) api[m] = async (input: unknown) => checkOutput(m, await call(m, input));
  return api as unknown as PlatterApi;
}

/** Electron: the preload's bridge, with its answers checked here too. */
export function wrapBridge(bridge: PlatterApi): PlatterApi {
  return makeApi(
    (m, input) => (bridge[m] as (i: unknown) => Promise<unknown>)(input),
    (event, listener) =>
      bridge.on(event, (payload) => {
        const r = events[event].safeParse(payload);
        if (r.success) listener(r.data);
      }),
  );
}

interface Pending {
  method: MethodName;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/**
 * The web host's WebSocket: the first message carries the token, then
 * requests {id, method, input}; answers {id, ok, output | error}; pushes
 * {event, payload}. Inputs are checked before they leave, so a bad form value
 * fails here with the same message the engine would give.
 */
export function connectWebSocket(url: string, token: string, Socket: typeof WebSocket = WebSocket): PlatterApi {
  const ws = new Socket(url);
  const pending = new Map<number, Pending>();
  const listeners = new Map<EventName, Set<Listener>>();
  let nextId = 1;
  let closed: ApiError | undefined;
  const opened = new Promise<void>((resolve) => {
    ws.addEventListener('open', () => {
      ws.send(JSON.stringify({ token }));
      resolve();
    });
  });

  ws.addEventListener('message', (msg) => {
    let data: unknown;
    try {
      data = JSON.parse(String(msg.data));
    } catch {
      return;
    }
    if (typeof data !== 'object' || data === null) return;
    const m = data as { id?: unknown; ok?: unknown; output?: unknown; error?: unknown; event?: unknown; payload?: unknown };
    if (typeof m.event === 'string' && Object.hasOwn(events, m.event)) {
      const event = m.event as EventName;
      const r = events[event].safeParse(m.payload);
      if (r.success) for (const l of listeners.get(event) ?? []) l(r.data);
      return;
    }
    if (typeof m.id !== 'number') return;
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.ok === true) {
      p.resolve(m.output);
    } else {
      const e = (m.error ?? {}) as { kind?: unknown; message?: unknown };
      p.reject(new ApiError(typeof e.kind === 'string' ? e.kind : 'Io', typeof e.message === 'string' ? e.message : `${p.method} failed`));
    }
  });

  ws.addEventListener('close', () => {
    closed = new ApiError('Io', 'the connection to Platter closed; reload the page');
    for (const p of pending.values()) p.reject(closed);
    pending.clear();
  });

  const call: Call = async (method, input) => {
    const parsed = contract[method].input.safeParse(input);
    if (!parsed.success) throw new ApiError('Validation', parsed.error.issues[0]?.message ?? 'invalid input');
    await opened;
    if (closed) throw closed;
    const id = nextId++;
    return new Promise((resolve, reject) => {
      pending.set(id, { method, resolve, reject });
      ws.send(JSON.stringify({ id, method, input: parsed.data }));
    });
  };

  const on = (event: EventName, listener: Listener) => {
    let set = listeners.get(event);
    if (!set) listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => void set.delete(listener);
  };
  return makeApi(call, on);
}

/** The token the web host put in the page's URL (`#token=...`). */
export function tokenFromHash(hash: string): string {
  return new URLSearchParams(hash.replace(/^#/, '')).get('token') ?? '';
}

let current: PlatterApi | undefined;

/** The API for this page: the Electron bridge when there is one, else the web host's WebSocket. */
export function api(): PlatterApi {
  if (!current) {
    if (window.platter) {
      current = wrapBridge(window.platter);
    } else {
      const url = new URL('/ws', location.href);
      url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
      url.hash = '';
      current = connectWebSocket(url.href, tokenFromHash(location.hash));
    }
  }
  return current;
}

/** Whether native dialogs exist (Electron); the web host asks for typed paths instead. */
export const hasNativeDialogs = (): boolean => window.platter !== undefined;

/** One line for the user from anything thrown. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
