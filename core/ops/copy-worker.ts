/**
 * A copy worker's thread (see copy-workers.ts): takes chunks of a threaded
 * copy into a raw target until none are left. Bundled next to the CLI and
 * the job worker by scripts/build.mjs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { toBlockError } from '../image/errors.js';
import { copyTakenChunks, type CopyTask, type CopyWorkerMessage } from './copy-workers.js';

if (!parentPort) throw new Error('copy-worker runs only as a worker thread');
const port = parentPort;
const post = (m: CopyWorkerMessage) => port.postMessage(m);

/** Progress goes out at most this often (ms); the rest is sent at the end. */
const REPORT_EVERY = 50;

async function run(): Promise<void> {
  let unreported = 0;
  let last = Date.now();
  try {
    await copyTakenChunks(workerData as CopyTask, (bytes) => {
      unreported += bytes;
      if (Date.now() - last >= REPORT_EVERY) {
        post({ type: 'progress', bytes: unreported });
        unreported = 0;
        last = Date.now();
      }
    });
    post({ type: 'progress', bytes: unreported });
  } catch (err) {
    post({ type: 'error', error: toBlockError(err).toJSON() });
  } finally {
    port.close();
  }
}

void run();
