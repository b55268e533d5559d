import { describe, expect, it } from 'vitest';
import { ApiError, type JobInfo } from '../electron/ipc/contract.js';
import { connectWebSocket, tokenFromHash } from './api.js';

/** A WebSocket double: records what the client sends and lets the test answer. */
class FakeSocket extends EventTarget {
  static last: FakeSocket;
  sent: unknown[] = [];
  constructor(readonly url: string) {
    super();
    FakeSocket.last = this;
    queueMicrotask(() => this.dispatchEvent(new Event('open')));
  }
  send(text: string) {
    this.sent.push(JSON.parse(text));
  }
  receive(msg: unknown) {
    this.dispatchEvent(new MessageEvent('message', { data: JSON.stringify(msg) }));
  }
}

const connect = () => connectWebSocket('ws://127.0.0.1:1/ws', 'secret', FakeSocket as unknown as typeof WebSocket);
const tick = () => new Promise((r) => setTimeout(r, 0));

const JOB: JobInfo = { id: 'j1', kind: 'convert', title: 't', target: '/t', state: 'running', done: 1, total: 2, bytesPerSecond: 0, startedAt: 0 };

describe('the web host client', () => {
  it('sends the token first, then calls, and resolves with checked outputs', async () => {
    const api = connect();
    const answer = api.freeSpace({ path: '/tmp' });
    await tick();
    const s = FakeSocket.last;
    expect(s.sent).toEqual([{ token: 'secret' }, { id: 1, method: 'freeSpace', input: { path: '/tmp' } }]);
    s.receive({ id: 1, ok: true, output: { bytes: 42 } });
    expect(await answer).toEqual({ bytes: 42 });
  });

  it('turns error answers into ApiError with their kind', async () => {
    const api = connect();
    const answer = api.info({ path: '/nope' });
    await tick();
    FakeSocket.last.receive({ id: 1, ok: false, error: { kind: 'NotFound', message: '/nope: no such file' } });
    await expect(answer).rejects.toMatchObject({ name: 'ApiError', kind: 'NotFound', message: '/nope: no such file' });
  });

  it('refuses an answer that breaks the contract', async () => {
    const api = connect();
    const answer = api.freeSpace({ path: '/tmp' });
    await tick();
    FakeSocket.last.receive({ id: 1, ok: true, output: { bytes: -1 } });
    const err = await answer.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).kind).toBe('Protocol');
  });

  it('checks inputs before sending', async () => {
    const api = connect();
    await expect(api.create({ path: '/x', format: 'Bad Name', size: 1, options: {} })).rejects.toMatchObject({ kind: 'Validation' });
    await tick();
    expect(FakeSocket.last.sent).toEqual([{ token: 'secret' }]);
  });

  it('delivers valid job events and drops malformed ones', async () => {
    const api = connect();
    const seen: JobInfo[] = [];
    const off = api.on('job', (j) => seen.push(j));
    await tick();
    FakeSocket.last.receive({ event: 'job', payload: JOB });
    FakeSocket.last.receive({ event: 'job', payload: { ...JOB, state: 'exploded' } });
    off();
    FakeSocket.last.receive({ event: 'job', payload: JOB });
    expect(seen).toEqual([JOB]);
  });

  it('reads the token from the page hash', () => {
    expect(tokenFromHash('#token=abc123')).toBe('abc123');
    expect(tokenFromHash('')).toBe('');
  });
});
