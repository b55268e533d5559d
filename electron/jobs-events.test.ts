/**
 * The job manager's bookkeeping, driven by scripted workers (plain .cjs files
 * written here), so the timing is known: throttling, speed, crashes.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../core/test/tmp.js';
import type { JobInfo } from './ipc/contract.js';
import { JobManager } from './jobs.js';

const MiB = 1 << 20;
let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir()));
afterAll(() => t.cleanup());

/** A worker whose body is `code` (CommonJS, with `port` = parentPort). */
function script(name: string, code: string): string {
  const p = t.path(`${name}.cjs`);
  writeFileSync(p, `const port = require('node:worker_threads').parentPort;\n${code}\n`);
  return p;
}

async function run(workerPath: string, speedWindowMs?: number) {
  const events: (JobInfo & { at: number })[] = [];
  const jobs = new JobManager({ workerPath, speedWindowMs, onEvent: (info) => events.push({ ...info, at: Date.now() }) });
  const input = { sources: ['/a.raw'], target: '/b.qcow2', targetFormat: 'qcow2', options: {}, compress: false };
  const id = jobs.startConvert(input);
  return { end: await jobs.settled(id), events, jobs };
}

describe('JobManager events', () => {
  it('reports at most one progress event per 250 ms, the last state, and the speed over the recent window', async () => {
    // 100 MiB every 20 ms for 2 s (5000 MiB/s if timers are on time): 100 progress messages.
    const steady = script(
      'steady',
      `let i = 0;
       const timer = setInterval(() => {
         i++;
         port.postMessage({ type: 'progress', done: i * ${100 * MiB}, total: ${10_000 * MiB} });
         if (i === 100) { clearInterval(timer); port.postMessage({ type: 'done' }); port.close(); }
       }, 20);`,
    );
    const { end, events } = await run(steady);
    expect(end).toMatchObject({ state: 'done', done: 10_000 * MiB, total: 10_000 * MiB, title: 'Convert a.raw to qcow2' });
    const running = events.filter((e) => e.state === 'running');
    expect(running[0]).toMatchObject({ done: 0, total: 0 }); // the start, at once
    const gaps = running.slice(2).map((e, i) => e.at - running[i + 1]!.at);
    for (const gap of gaps) expect(gap).toBeGreaterThanOrEqual(240);
    expect(running.length).toBeGreaterThanOrEqual(5);
    expect(running.length).toBeLessThanOrEqual(12); // 2 s at 4 a second, plus the start
    // The speed is the rate actually seen (timers on a busy machine run late), within a third.
    const [first, late] = [running[1]!, running.at(-1)!];
    const seen = (late.done - first.done) / ((late.at - first.at) / 1000);
    expect(late.bytesPerSecond).toBeGreaterThan(seen * 0.67);
    expect(late.bytesPerSecond).toBeLessThan(seen * 1.5);
    expect(events.at(-1)).toMatchObject({ state: 'done' });
    expect(events.filter((e) => e.state !== 'running')).toHaveLength(1);
  });

  it('the speed follows the recent rate, not the average', async () => {
    // 1 s at 100 MiB per 20 ms, then 1 s at 10 MiB per 20 ms.
    const slowing = script(
      'slowing',
      `let i = 0, done = 0;
       const timer = setInterval(() => {
         i++;
         done += i <= 50 ? ${100 * MiB} : ${10 * MiB};
         port.postMessage({ type: 'progress', done, total: ${10_000 * MiB} });
         if (i === 100) { clearInterval(timer); port.postMessage({ type: 'done' }); port.close(); }
       }, 20);`,
    );
    const { events } = await run(slowing, 500);
    const running = events.filter((e) => e.state === 'running' && e.done > 0);
    const late = running.at(-1)!;
    const slowFrom = running.find((e) => e.done > 50 * 100 * MiB + 20 * 10 * MiB)!; // well into the slow phase
    const slowRate = (late.done - slowFrom.done) / ((late.at - slowFrom.at) / 1000);
    const average = late.done / ((late.at - running[0]!.at) / 1000);
    expect(late.bytesPerSecond).toBeLessThan(slowRate * 1.5);
    expect(late.bytesPerSecond).toBeLessThan(average / 2);
  });

  it('a worker that throws, or exits without a word, fails its job', async () => {
    const threw = await run(script('throws', `throw new Error('boom');`));
    expect(threw.end).toMatchObject({ state: 'failed', error: { kind: 'Io', message: 'the job stopped: boom' } });
    const quiet = await run(script('quiet', `port.close();`));
    expect(quiet.end).toMatchObject({ state: 'failed', error: { kind: 'Io', message: 'the job stopped unexpectedly' } });
    expect(quiet.jobs.cancel(quiet.end.id)).toBe(false);
  });

  it('cancel is passed to the worker, and its Cancelled error ends the job as cancelled', async () => {
    const cancellable = script(
      'cancellable',
      `port.on('message', (m) => {
         if (m === 'cancel') { port.postMessage({ type: 'error', error: { kind: 'Cancelled', message: 'cancelled' } }); port.close(); }
       });`,
    );
    const events: JobInfo[] = [];
    const jobs = new JobManager({ workerPath: cancellable, onEvent: (info) => events.push(info) });
    const id = jobs.startConvert({ sources: ['/a'], target: '/b', targetFormat: 'raw', options: {}, compress: false });
    expect(jobs.list()).toMatchObject([{ id, state: 'running' }]);
    expect(jobs.cancel('nope')).toBe(false);
    expect(jobs.cancel(id)).toBe(true);
    expect(await jobs.settled(id)).toMatchObject({ state: 'cancelled', error: { kind: 'Cancelled' } });
    expect(events.map((e) => e.state)).toEqual(['running', 'cancelled']);
  });
});
