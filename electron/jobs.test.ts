/**
 * The job manager: a convert runs in a worker thread while the manager's
 * event loop stays free, reports throttled progress and its end, and a
 * cancelled job leaves no target behind. Needs the built worker
 * (dist/electron/job-worker.cjs: run `npm run build` first).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, openSync, readdirSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuCompare } from '../core/test/qemu.js';
import { hasTool, tempDir } from '../core/test/tmp.js';
import type { JobInfo } from './ipc/contract.js';
import { JobManager } from './jobs.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
const WORKER = fileURLToPath(new URL('../dist/electron/job-worker.cjs', import.meta.url));
const hasQemu = hasTool('qemu-img', 'apt-get install qemu-utils');

let t: ReturnType<typeof tempDir>;
let source: string;

/** 2 GiB, sparse, with 320 MiB of data: ten 32 MiB runs of random bytes, one every 200 MiB. */
function makeSource(p: string): void {
  const fd = openSync(p, 'w');
  try {
    ftruncateSync(fd, 2 * GiB);
    const chunk = randomBytes(8 * MiB);
    for (let run = 0; run < 10; run++) {
      for (let i = 0; i < 4; i++) {
        chunk[0] = run * 4 + i; // no two chunks alike
        writeSync(fd, chunk, 0, chunk.length, run * 200 * MiB + i * chunk.length);
      }
    }
  } finally {
    closeSync(fd);
  }
}

beforeAll(() => {
  expect(existsSync(WORKER), `${WORKER} is missing: run \`npm run build\``).toBe(true);
  t = tempDir();
  source = t.path('src.raw');
  makeSource(source);
});
afterAll(() => t?.cleanup());

function manager() {
  const events: (JobInfo & { at: number })[] = [];
  const jobs = new JobManager({ workerPath: WORKER, onEvent: (info) => events.push({ ...info, at: Date.now() }) });
  return { jobs, events };
}

const convertInput = (target: string) => ({ sources: [source], target, targetFormat: 'qcow2', options: {}, compress: false });

describe('JobManager', () => {
  // Compressed, so the job is CPU-bound for seconds: run on this thread, the
  // same convert measured a max delay over 120 ms here; in the worker, p99 ~15 ms.
  it('converts 2 GiB off the event loop (p99 delay < 50 ms), with at most ~4 progress events a second', async () => {
    const { jobs, events } = manager();
    const target = t.path('out.qcow2');
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    const started = Date.now();
    const id = jobs.startConvert({ ...convertInput(target), compress: true });
    const end = await jobs.settled(id);
    delay.disable();
    const seconds = (Date.now() - started) / 1000;
    const p99 = delay.percentile(99) / 1e6;
    const max = delay.max / 1e6;
    console.log(
      `compressed convert of 2 GiB (320 MiB data) in ${seconds.toFixed(2)} s; ` +
        `event-loop delay p99 ${p99.toFixed(1)} ms, max ${max.toFixed(1)} ms; ${events.length} events`,
    );

    expect(end).toMatchObject({ id, state: 'done', done: 2 * GiB, total: 2 * GiB });
    expect(p99).toBeLessThan(50);
    const mine = events.filter((e) => e.id === id);
    expect(mine.at(-1)).toMatchObject({ state: 'done', done: 2 * GiB });
    expect(mine.slice(0, -1).every((e) => e.state === 'running')).toBe(true);
    // Throttled: between two progress events at least ~250 ms (timers may fire a little early).
    const progress = mine.filter((e) => e.state === 'running' && e.done > 0);
    for (let i = 1; i < progress.length; i++) expect(progress[i]!.at - progress[i - 1]!.at).toBeGreaterThanOrEqual(240);
    expect(progress.length).toBeLessThanOrEqual(Math.ceil(seconds * 4) + 1);
    if (progress.length > 0) expect(progress.some((e) => e.bytesPerSecond > 0)).toBe(true);
    expect(jobs.list()).toMatchObject([{ id, state: 'done' }]);
    if (hasQemu) expect(qemuCompare(source, target)).toBe('Images are identical.');
  });

  it('a cancelled convert ends as cancelled and leaves no target file', async () => {
    const { jobs, events } = manager();
    const target = t.path('cancelled.qcow2');
    const before = readdirSync(t.dir).sort();
    // Compressed, so it runs for seconds whatever the disk: a plain copy of
    // this sparse source can end before its first progress event.
    const id = jobs.startConvert({ ...convertInput(target), compress: true });
    // Cancel once it has really started writing.
    while (!events.some((e) => e.id === id && e.done > 0 && e.state === 'running')) {
      expect(events.some((e) => e.id === id && e.state !== 'running'), 'the job ended before it could be cancelled').toBe(false);
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(jobs.cancel(id)).toBe(true);
    const end = await jobs.settled(id);
    expect(end).toMatchObject({ state: 'cancelled', error: { kind: 'Cancelled' } });
    expect(end.done).toBeLessThan(2 * GiB);
    expect(events.at(-1)).toMatchObject({ id, state: 'cancelled' });
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(t.dir).sort()).toEqual(before);
    expect(jobs.cancel(id)).toBe(false);
  });

  it('a failing convert ends as failed with a one-line error', async () => {
    const { jobs } = manager();
    const missing = t.path('missing.raw');
    const id = jobs.startConvert({ ...convertInput(t.path('never.qcow2')), sources: [missing] });
    const end = await jobs.settled(id);
    expect(end).toMatchObject({ state: 'failed', error: { kind: 'NotFound', message: `${missing}: no such file or directory` } });
    expect(existsSync(t.path('never.qcow2'))).toBe(false);
  });
});
