/**
 * A job's thread: runs one convert off the host's event loop (Electron main
 * or the web host must stay responsive). Bundled by scripts/build.mjs to
 * dist/electron/job-worker.cjs. Messages in: 'cancel'. Messages out:
 * progress, then done or error (see WorkerMessage in jobs.ts).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { convert } from '../core/ops/convert.js';
import { errorShape } from './ipc/errors.js';
import type { ConvertJob, WorkerMessage } from './jobs.js';

if (!parentPort) throw new Error('job-worker runs only as a worker thread');
const port: MessagePort = parentPort;

const job = workerData as ConvertJob;
const controller = new AbortController();
port.on('message', (m) => {
  if (m === 'cancel') controller.abort();
});

const post = (m: WorkerMessage) => port.postMessage(m);

async function run(): Promise<void> {
  try {
    const { sources, target, targetFormat, options, compress } = job;
    await convert(
      { sources, target, targetFormat, options, compress },
      { signal: controller.signal, onProgress: ({ done, total }) => post({ type: 'progress', done, total }) },
    );
    post({ type: 'done' });
  } catch (err) {
    post({ type: 'error', error: errorShape(err) });
  } finally {
    port.close();
  }
}

void run();
