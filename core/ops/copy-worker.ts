/**
 * A copy worker's thread (see copy-workers.ts): takes chunks of a threaded
 * copy until none are left. Bundled next to the CLI and the job worker by
 * scripts/build.mjs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { toBlockError } from '../image/errors.js';
import { copyTakenChunks, stopRequested, type CopyWorkerMessage, type WorkerData } from './copy-workers.js';
import { workerClusters } from './placed-copy.js';

if (!parentPort) throw new Error('copy-worker runs only as a worker thread');
const port = parentPort;
const post = (m: CopyWorkerMessage) => port.postMessage(m);

/** Progress goes out at most this often (ms); the rest is sent at the end. */
const REPORT_EVERY = 50;

/** A worker never needs its event loop during the copy: it only sends. */
const NEVER = Infinity;

async function run({ task, worker }: WorkerData): Promise<void> {
  let unreported = 0;
  let last = Date.now();
  const clusters = task.placed
    ? workerClusters(task.placed, worker, () => stopRequested(task), (slot) => post({ type: 'refill', slot }))
    : undefined;
  try {
    await copyTakenChunks(task, {
      report: (bytes) => {
        unreported += bytes;
        if (Date.now() - last >= REPORT_EVERY) {
          post({ type: 'progress', bytes: unreported });
          unreported = 0;
          last = Date.now();
        }
      },
      placing: clusters && { clusters, mapped: (runs) => post({ type: 'mapped', runs }) },
      yieldEvery: NEVER,
    });
    post({ type: 'progress', bytes: unreported });
  } catch (err) {
    post({ type: 'error', error: toBlockError(err).toJSON() });
  } finally {
    if (clusters) post({ type: 'leftover', runs: clusters.leftover() });
    port.close();
  }
}

// A worker started with its copy runs it; one started ahead of it (startCopyThreadsAhead) says when it is loaded, then runs the copy it is sent.
if (workerData) void run(workerData as WorkerData);
else {
  port.once('message', (data: WorkerData) => void run(data));
  post({ type: 'ready' });
}
