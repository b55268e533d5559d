/**
 * Copying into a raw file on several threads. The in-process pipeline
 * (copy.ts) hands every read and write to libuv's pool and back: on a 2-core
 * VM, a 2 GiB raw->raw convert spent about 0.25 s more CPU in those hand-offs
 * and in the kernel's inode lock than qemu-img spent in all. Here the calling
 * thread and worker threads each open the sources and the target themselves,
 * with blocking I/O, and take 512 KiB chunks from a shared counter: read,
 * zero check and write on one thread, with the chunk still in that core's
 * cache. A raw target has no metadata (FormatImage.plainFile), so writers on
 * distinct ranges cannot disturb each other; other targets keep the
 * pipeline, whose driver owns the target's metadata on one thread.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { extname } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { BlockError, throwIfAborted, toBlockError, type SerializedError } from '../image/errors.js';
import type { Image, OpenedAs } from '../image/image.js';
import { openImage } from '../image/open.js';
import { chunksOf, copySpans, type CopyOptions, type CopySpan } from './copy.js';
import { ProgressMeter, type JobContext } from './job.js';

/**
 * Bytes per chunk. Measured on the 2 GiB bench image (6 runs each, order
 * rotated, a bare two-thread copy): 512 KiB copied in 0.41-0.44 s, 2 MiB in
 * 0.49-0.57 s with a third of runs over 1.2 s. A chunk this size stays in the
 * core's L2 cache between its read and its write, and its page-cache pages
 * are small folios instead of 2 MiB ones that each take a whole free page
 * block (on VMs that hand free blocks back to the host, slow to fault in).
 */
const CHUNK = 512 << 10;

/** Below this, starting threads costs more than they save. */
const MIN_BYTES = 64 << 20;

/** More writers than this only queue on the target's inode lock. */
const MAX_THREADS = 4;

/** At most this many threads even when asked for more (qemu-img's -m allows as many requests). */
const MAX_ASKED = 16;

/** Blocking I/O starves the calling thread's event loop; it gets a turn this often (ms). */
const YIELD_EVERY = 20;

/** Indexes into the shared Int32Array: the stop flag (1 = stop), and the next chunk nobody has taken. */
const STOP = 0;
const NEXT = 1;

/** What a copy worker is given (structured-cloned into its thread). */
export interface CopyTask {
  sources: OpenedAs[];
  target: OpenedAs;
  /** All the copy's spans; `source` indexes `sources`. */
  spans: { source: number; sourceOffset: number; length: number; targetOffset: number }[];
  copy: CopyOptions;
  /** Int32Array over it, indexed by STOP and NEXT. */
  control: SharedArrayBuffer;
}

/** What a copy worker says: bytes done since its last report, or why it failed. Its exit ends it. */
export type CopyWorkerMessage = { type: 'progress'; bytes: number } | { type: 'error'; error: SerializedError };

/** The worker script beside this bundle (.mjs for the CLI, .cjs for Electron); none when running from source. */
function workerScript(): URL | undefined {
  const ext = extname(fileURLToPath(import.meta.url));
  if (ext !== '.mjs' && ext !== '.cjs') return undefined;
  const url = new URL(`./copy-worker${ext}`, import.meta.url);
  return existsSync(url) ? url : undefined;
}

/** Threads to copy with, this one included: PLATTER_COPY_THREADS, else one per core up to MAX_THREADS. */
function threadCount(): number {
  const asked = Number(process.env.PLATTER_COPY_THREADS);
  if (Number.isInteger(asked) && asked >= 1) return Math.min(asked, MAX_ASKED);
  return Math.min(availableParallelism(), MAX_THREADS);
}

/** The chunks this thread takes, in order: each goes to whichever thread asks for it first. */
function* takenChunks(spans: CopySpan[], control: Int32Array): Generator<CopySpan> {
  let index = 0;
  let mine = Atomics.add(control, NEXT, 1);
  for (const chunk of chunksOf(spans, CHUNK)) {
    if (index++ !== mine) continue;
    yield chunk;
    mine = Atomics.add(control, NEXT, 1);
  }
}

/**
 * One thread's part of a threaded copy, the same on every thread: opens the
 * images with blocking I/O, copies the chunks it takes until none are left
 * or someone sets the stop flag, and reports bytes as it goes. On an error
 * it sets the stop flag before throwing.
 */
export async function copyTakenChunks(task: CopyTask, report: (bytes: number) => void): Promise<void> {
  const control = new Int32Array(task.control);
  const images: Image[] = [];
  const open = async ({ filename, options }: OpenedAs) => {
    const image = await openImage(filename, { ...options, blocking: true });
    images.push(image);
    return image;
  };
  try {
    const sources: Image[] = [];
    for (const s of task.sources) sources.push(await open(s));
    const target = await open(task.target);
    const spans = task.spans.map((s) => ({ ...s, source: sources[s.source] }));
    let turn = Date.now();
    for (const chunk of takenChunks(spans, control)) {
      if (Atomics.load(control, STOP) !== 0) return;
      await copySpans([chunk], target, task.copy, {});
      report(chunk.length);
      if (Date.now() - turn >= YIELD_EVERY) {
        await nextTurn();
        turn = Date.now();
      }
    }
  } catch (err) {
    Atomics.store(control, STOP, 1);
    throw err;
  } finally {
    for (const image of images.reverse()) await image.close().catch(() => undefined);
  }
}

/**
 * Copies `spans` into `target` on this thread and worker threads when that
 * applies (a raw target, sources and target reopenable, no compression or
 * rate limit, enough data); returns false, having done nothing, when it does
 * not. `script` is the worker's file (tests running from source pass the built one).
 */
export async function copyInWorkers(
  spans: CopySpan[],
  target: Image,
  opts: CopyOptions,
  ctx: JobContext,
  script = workerScript(),
): Promise<boolean> {
  const total = spans.reduce((n, s) => n + s.length, 0);
  const threads = threadCount();
  const targetAs = target.openedAs;
  const sources = [...new Set(spans.map((s) => s.source))];
  if (
    !script ||
    threads < 2 ||
    total < MIN_BYTES ||
    !targetAs ||
    !target.plainFile ||
    opts.compress ||
    opts.rateLimit > 0 ||
    sources.some((s) => !s.openedAs)
  ) {
    return false;
  }
  const control = new SharedArrayBuffer(2 * Int32Array.BYTES_PER_ELEMENT);
  const task: CopyTask = {
    sources: sources.map((s) => s.openedAs!),
    target: { filename: targetAs.filename, options: { ...targetAs.options, readOnly: false } },
    spans: spans.map((s) => ({ ...s, source: sources.indexOf(s.source) })),
    copy: { ...opts, chunkSize: CHUNK, parallel: 1 },
    control,
  };
  const meter = new ProgressMeter(total, ctx);
  const words = new Int32Array(control);
  const halt = () => Atomics.store(words, STOP, 1);
  let failure: BlockError | undefined;
  const fail = (err: BlockError) => {
    failure ??= err;
    halt();
  };
  if (ctx.signal?.aborted) halt();
  ctx.signal?.addEventListener('abort', halt);
  try {
    const workers = Array.from(
      { length: threads - 1 },
      () =>
        new Promise<void>((resolve) => {
          let worker: Worker;
          try {
            worker = new Worker(script, { workerData: task });
          } catch (err) {
            // No thread to be had (a resource limit): the copy stops, the threads started so far with it.
            fail(toBlockError(err, { path: target.filename }));
            resolve();
            return;
          }
          worker.on('message', (m: CopyWorkerMessage) => {
            if (m.type === 'progress') meter.add(m.bytes);
            else if (m.type === 'error') {
              const { kind, message, ...context } = m.error;
              fail(new BlockError(kind, message, context));
            }
          });
          worker.on('error', (err) => fail(toBlockError(err, { path: target.filename, op: 'write' })));
          worker.on('exit', (code) => {
            const stopped = `a copy thread stopped (exit code ${code})`;
            if (code !== 0) fail(new BlockError('Io', stopped, { path: target.filename }));
            resolve();
          });
        }),
    );
    // This thread takes chunks too while the workers start.
    await copyTakenChunks(task, (bytes) => meter.add(bytes)).catch((err) => fail(toBlockError(err)));
    await Promise.all(workers);
  } finally {
    ctx.signal?.removeEventListener('abort', halt);
  }
  throwIfAborted(ctx.signal);
  if (failure) throw failure;
  meter.finish();
  return true;
}
