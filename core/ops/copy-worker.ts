/**
 * A copy worker's thread (see copy-workers.ts): opens the sources and the raw
 * target with blocking I/O and copies the chunks it was given. Bundled next
 * to the CLI and the job worker by scripts/build.mjs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { toBlockError } from '../image/errors.js';
import type { Image } from '../image/image.js';
import { openImage } from '../image/open.js';
import { copySpans } from './copy.js';
import type { CopyTask, CopyWorkerMessage } from './copy-workers.js';

if (!parentPort) throw new Error('copy-worker runs only as a worker thread');
const port = parentPort;
const task = workerData as CopyTask;
const post = (m: CopyWorkerMessage) => port.postMessage(m);

async function run(): Promise<void> {
  const images: Image[] = [];
  const open = async (name: string, options: CopyTask['target']['options']) => {
    const image = await openImage(name, { ...options, blocking: true });
    images.push(image);
    return image;
  };
  // Another worker failing, or a cancel, sets the stop flag; seen at each progress report.
  const stop = new Int32Array(task.stop);
  const controller = new AbortController();
  try {
    const sources: Image[] = [];
    for (const s of task.sources) sources.push(await open(s.filename, s.options));
    const target = await open(task.target.filename, task.target.options);
    const spans = task.spans.map((s) => ({ ...s, source: sources[s.source] }));
    let reported = 0;
    await copySpans(spans, target, task.copy, {
      signal: controller.signal,
      onProgress: ({ done }) => {
        if (Atomics.load(stop, 0) !== 0) controller.abort();
        post({ type: 'progress', bytes: done - reported });
        reported = done;
      },
    });
    post({ type: 'done' });
  } catch (err) {
    post({ type: 'error', error: toBlockError(err).toJSON() });
  } finally {
    for (const image of images.reverse()) await image.close().catch(() => undefined);
    port.close();
  }
}

void run();
