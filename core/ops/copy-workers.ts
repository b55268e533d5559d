/**
 * Copying into a raw file on several threads. The in-process pipeline
 * (copy.ts) hands every read and write to libuv's pool and back: on a 2-core
 * VM, a 2 GiB raw->raw convert spent about 0.25 s more CPU in those hand-offs
 * and in the kernel's inode lock than qemu-img spent in all. Here each worker
 * thread opens the sources and the target itself, with blocking I/O, and
 * copies every Nth chunk: read, zero check and write on one thread, with the
 * chunk still in that core's cache. A raw target has no metadata, so writers
 * on distinct ranges cannot disturb each other; other targets keep the
 * pipeline, whose driver owns the target's metadata on one thread.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { BlockError, throwIfAborted, toBlockError, type SerializedError } from '../image/errors.js';
import type { Image } from '../image/image.js';
import type { OpenOptions } from '../image/open.js';
import { chunksOf, type CopyOptions, type CopySpan } from './copy.js';
import { ProgressMeter, type JobContext } from './job.js';

/**
 * Bytes per chunk on a worker. Measured on the 2 GiB bench image (6 runs
 * each, order rotated): 512 KiB copied in 0.41-0.44 s, 2 MiB in 0.49-0.57 s
 * with a third of runs over 1.2 s. A chunk this size stays in the core's L2
 * cache between its read and its write, and its page-cache pages are small
 * folios instead of 2 MiB ones that each take a whole free page block (on
 * VMs that hand free blocks back to the host, slow to fault in again).
 */
const WORKER_CHUNK = 512 << 10;

/** Below this, starting threads costs more than they save. */
const MIN_BYTES = 64 << 20;

/** More writers than this only queue on the target's inode lock. */
const MAX_THREADS = 4;

/** What a copy worker is given (structured-cloned into its thread). */
export interface CopyTask {
  sources: OpenedAs[];
  target: OpenedAs;
  /** This worker's chunks; `source` indexes `sources`. */
  spans: { source: number; sourceOffset: number; length: number; targetOffset: number }[];
  copy: CopyOptions;
  /** Int32Array over it: [0] becomes 1 when the copy is cancelled or failed elsewhere. */
  stop: SharedArrayBuffer;
}

interface OpenedAs {
  filename: string;
  options: OpenOptions;
}

/** What a copy worker says: bytes done since its last report, then done or error. */
export type CopyWorkerMessage =
  | { type: 'progress'; bytes: number }
  | { type: 'done' }
  | { type: 'error'; error: SerializedError };

/** The worker script beside this bundle (.mjs for the CLI, .cjs for Electron); none when running from source. */
function workerScript(): URL | undefined {
  const ext = extname(fileURLToPath(import.meta.url));
  if (ext !== '.mjs' && ext !== '.cjs') return undefined;
  const url = new URL(`./copy-worker${ext}`, import.meta.url);
  return existsSync(url) ? url : undefined;
}

/** Threads to copy with: PLATTER_COPY_THREADS, else one per core up to MAX_THREADS; 1 means in-process. */
function threadCount(): number {
  const asked = Number(process.env.PLATTER_COPY_THREADS);
  return Number.isInteger(asked) && asked >= 1 ? Math.min(asked, MAX_THREADS * 4) : Math.min(availableParallelism(), MAX_THREADS);
}

/**
 * Copies `spans` into `target` on worker threads when that applies (a raw
 * target, sources and target reopenable, no compression or rate limit,
 * enough data); returns false, having done nothing, when it does not.
 * `script` is the worker's file (tests running from source pass the built one).
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
    target.format !== 'raw' ||
    opts.compress ||
    opts.rateLimit > 0 ||
    sources.some((s) => !s.openedAs)
  ) {
    return false;
  }
  const shares: CopyTask['spans'][] = Array.from({ length: threads }, () => []);
  let i = 0;
  for (const c of chunksOf(spans, WORKER_CHUNK)) {
    shares[i++ % threads].push({ ...c, source: sources.indexOf(c.source) });
  }
  const stop = new SharedArrayBuffer(4);
  const task = (share: CopyTask['spans']): CopyTask => ({
    sources: sources.map((s) => s.openedAs!),
    target: { filename: targetAs.filename, options: { ...targetAs.options, readOnly: false } },
    spans: share,
    copy: { ...opts, chunkSize: WORKER_CHUNK, parallel: 1 },
    stop,
  });
  const meter = new ProgressMeter(total, ctx);
  const halt = () => Atomics.store(new Int32Array(stop), 0, 1);
  if (ctx.signal?.aborted) halt();
  ctx.signal?.addEventListener('abort', halt);
  let failure: BlockError | undefined;
  try {
    await Promise.all(
      shares.map(
        (share) =>
          new Promise<void>((resolve) => {
            const worker = new Worker(script, { workerData: task(share) });
            const fail = (err: BlockError) => {
              failure ??= err;
              halt();
            };
            worker.on('message', (m: CopyWorkerMessage) => {
              if (m.type === 'progress') meter.add(m.bytes);
              else if (m.type === 'error') {
                const { kind, message, ...context } = m.error;
                fail(new BlockError(kind, message, context));
              }
            });
            worker.on('error', (err) => fail(toBlockError(err, { path: target.filename, op: 'write' })));
            worker.on('exit', (code) => {
              if (code !== 0) fail(new BlockError('Io', `a copy thread stopped (exit code ${code})`, { path: target.filename }));
              resolve();
            });
          }),
      ),
    );
  } finally {
    ctx.signal?.removeEventListener('abort', halt);
  }
  // A cancel makes workers stop early and say so; report it as the pipeline does.
  throwIfAborted(ctx.signal);
  if (failure) throw failure;
  meter.finish();
  return true;
}
