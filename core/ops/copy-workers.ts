/**
 * Copying on several threads. The in-process pipeline (copy.ts) hands every
 * read and write to libuv's pool and back: on a 2-core VM, a 2 GiB raw->raw
 * convert spent about 0.25 s more CPU in those hand-offs and in the kernel's
 * inode lock than qemu-img spent in all. Here the calling thread and worker
 * threads each open the sources and the target themselves, with blocking
 * I/O, and take 512 KiB chunks from a shared counter: read, zero check and
 * write on one thread, with the chunk still in that core's cache.
 *
 * Two kinds of target take this. A raw one (or a fixed VHD) has no
 * metadata (FormatImage.plainFile): every thread opens it and writes its
 * chunks in place. A new qcow2, dynamic VHD or VHDX places clusters
 * (PlacesClusters): the threads write data clusters into host clusters this
 * thread reserves for them and send back where they went, and this thread,
 * which owns the image's metadata, maps them (placed-copy.ts). Other
 * targets keep the pipeline.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { extname } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { ClusterPlacement } from '../image/driver.js';
import { BlockError, throwIfAborted, toBlockError, type SerializedError } from '../image/errors.js';
import type { Image, OpenedAs } from '../image/image.js';
import { openImage } from '../image/open.js';
import { giveBuffer, takeBuffer } from '../io/buffers.js';
import { openProtocol } from '../io/open.js';
import { chunksOf, readChunk, writeRun, type CopyOptions, type CopySpan } from './copy.js';
import { ProgressMeter, type JobContext } from './job.js';
import {
  clusterAligned,
  copyChunkPlaced,
  PlacementService,
  type HostClusters,
  type HostRun,
  type PlacedShare,
} from './placed-copy.js';

/**
 * Bytes per chunk. Measured on the 2 GiB bench image (6 runs each, order
 * rotated, a bare two-thread copy): 512 KiB copied in 0.41-0.44 s, 2 MiB in
 * 0.49-0.57 s with a third of runs over 1.2 s. A chunk this size stays in the
 * core's L2 cache between its read and its write, and its page-cache pages
 * are small folios instead of 2 MiB ones that each take a whole free page
 * block (on VMs that hand free blocks back to the host, slow to fault in).
 * Placed copies use whole clusters: at least one.
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

/**
 * The same in a placed copy, where the calling thread also serves the
 * workers' requests: well within the 8 MiB (a few ms of copying) a worker
 * holds in its slots in a copy of 256 MiB of data or more (runBytesFor;
 * smaller copies have smaller runs, and may wait for them). Measured on
 * the 2 GiB bench image into qcow2: after every chunk, the turns took
 * 110-140 ms of the calling thread's 650; every 5 ms, 60-75 ms.
 */
const SERVE_EVERY = 5;

/** Mappings (guest cluster, host, count triples) a thread collects before it sends them to be made. */
const MAP_BATCH = 3 * 128;

/** Indexes into the shared Int32Array: the stop flag (1 = stop), and the next chunk nobody has taken. */
const STOP = 0;
const NEXT = 1;

/** Whether some thread set the copy's stop flag (an error, a cancel). */
export function stopRequested(task: CopyTask): boolean {
  return Atomics.load(new Int32Array(task.control), STOP) !== 0;
}

/** What a copy worker is given (structured-cloned into its thread). */
export interface CopyTask {
  sources: OpenedAs[];
  target: OpenedAs;
  /** All the copy's spans; `source` indexes `sources`. */
  spans: { source: number; sourceOffset: number; length: number; targetOffset: number }[];
  copy: CopyOptions;
  /** Int32Array over it, indexed by STOP and NEXT. */
  control: SharedArrayBuffer;
  /** For a target that places clusters: the threads write its data clusters into the target's file. */
  placed?: PlacedShare;
}

/** A worker's data: the task, and which worker it is (its slots in a placed copy). */
export interface WorkerData {
  task: CopyTask;
  worker: number;
}

/**
 * What a copy worker says: bytes done since its last report, why it failed,
 * and in a placed copy: a slot to refill, clusters it wrote (guest cluster,
 * host, count triples) and, last, the clusters it took and did not use.
 * Its exit ends it. A worker started ahead of its copy first says it is
 * ready: loaded, waiting for its WorkerData.
 */
export type CopyWorkerMessage =
  | { type: 'ready' }
  | { type: 'progress'; bytes: number }
  | { type: 'error'; error: SerializedError }
  | { type: 'refill'; slot: number }
  | { type: 'mapped'; runs: number[] }
  | { type: 'leftover'; runs: HostRun[] };

/** How one thread of a copy talks to the rest: the same loop runs on every thread. */
export interface ThreadSide {
  report(bytes: number): void;
  /** In a placed copy: this thread's host clusters, and where its mappings go. */
  placing?: { clusters: HostClusters; mapped(runs: number[]): Promise<void> | void };
  /** Event-loop turns at least this often (ms). */
  yieldEvery: number;
}

/** How a thread copies the chunks it takes; `finish` once it has taken its last. */
interface ChunkCopier {
  /** False when the copy was stopped meanwhile. */
  copy(chunk: CopySpan): Promise<boolean>;
  finish(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Into the target image, in place (raw): every thread opens it. One chunk
 * at a time, each write awaited: the I/O blocks anyway. (Each thread used
 * to run copySpans' pipeline for each chunk, and V8 optimized all of it on
 * every thread: a 2 GiB qcow2->raw took 650 ms of CPU in user space, now 520.)
 */
async function inPlaceCopier(task: CopyTask): Promise<ChunkCopier> {
  const target = await openImage(task.target.filename, { ...task.target.options, blocking: true });
  const buf = takeBuffer(CHUNK);
  return {
    copy: async (chunk) => {
      for (const run of await readChunk(chunk, buf, task.copy)) await writeRun(target, chunk, buf, run, task.copy);
      return true;
    },
    finish: async () => {},
    close: async () => {
      giveBuffer(buf);
      await target.close();
    },
  };
}

/** Into the target's file, at host clusters the owning thread reserved; the mappings go out in batches. */
async function placedCopier(
  task: CopyTask,
  placed: PlacedShare,
  placing: NonNullable<ThreadSide['placing']>,
  size: number,
): Promise<ChunkCopier> {
  const { filename, options } = task.target;
  const { cache, displayName } = options;
  const file = await openProtocol(filename, { readOnly: false, blocking: true, cache, displayName });
  const buf = takeBuffer(size);
  let batch: number[] = [];
  const send = async () => {
    if (batch.length) await placing.mapped(batch);
    batch = [];
  };
  return {
    copy: async (chunk) => {
      const maps = await copyChunkPlaced(chunk, buf, file, placing.clusters, placed, task.copy);
      if (!maps) return false;
      batch.push(...maps);
      if (batch.length >= MAP_BATCH) await send();
      return true;
    },
    finish: send,
    close: async () => {
      giveBuffer(buf);
      await file.close();
    },
  };
}

/** The worker script beside this bundle (the CLI's or Electron's); none when running from source. */
function workerScript(): URL | undefined {
  if (extname(fileURLToPath(import.meta.url)) !== '.cjs') return undefined;
  const url = new URL('./copy-worker.cjs', import.meta.url);
  return existsSync(url) ? url : undefined;
}

/**
 * A copy worker running `script`: through the code-cache loader when the
 * CLI's build put one beside it (core/cli/code-cache.ts), else as it is.
 * Without `workerData` it waits to be sent one (see copy-worker.ts).
 */
function startWorker(script: URL, workerData?: WorkerData): Worker {
  const loader = new URL('./code-cache.cjs', script);
  if (!existsSync(loader)) return new Worker(script, { workerData });
  const [loaderPath, scriptPath] = [loader, script].map((u) => JSON.stringify(fileURLToPath(u)));
  return new Worker(`require(${loaderPath}).loadBundle(${scriptPath});`, { eval: true, workerData });
}

/** Copy workers started ahead (startCopyThreadsAhead), loaded and waiting for a copy; and the promise of their loading. */
const ahead: Worker[] = [];
let aheadLoading: Promise<void> | undefined;

/**
 * Starts the worker threads a threaded copy would take, before the copy:
 * each loads the worker script and waits, while the calling thread opens
 * the images. Node takes 50-90 ms of a core to start a thread, the more
 * under the CLI's V8 flags (core/cli/code-cache.ts), which a thread started
 * by the copy starts under. On the 2 GiB bench image (-t unsafe, sides
 * alternating) the worker's first chunk came 90-115 ms after the command
 * started instead of 145-185; 15 runs: qcow2->raw 632 -> 604 ms, user CPU
 * 419 -> 350 ms; raw->qcow2 631 -> 632 ms, user CPU 421 -> 377 ms (earlier
 * sets: qcow2->raw 694 -> 676 ms, raw->qcow2 625 -> 562 ms). None start
 * when `bytes`, about what the copy will read, is below MIN_BYTES: a
 * thread still loading as the process ends delays its exit (a 1 MiB
 * convert took 130 ms instead of 83). `loaded` runs once all have loaded
 * (or failed to): the CLI sets its V8 flags then. Threads left unused do
 * not keep the process alive. For one-shot processes (the CLI): a copy
 * takes them all.
 */
export function startCopyThreadsAhead(bytes: number, loaded: () => void, script = workerScript()): Promise<void> {
  const count = script && bytes >= MIN_BYTES ? threadCount() - 1 : 0;
  const loading = Array.from({ length: count }, () => {
    const thread = startWorker(script!);
    thread.unref();
    return new Promise<void>((resolve) => {
      thread.once('message', (m: CopyWorkerMessage) => {
        if (m.type === 'ready') ahead.push(thread);
        resolve();
      });
      thread.once('error', () => resolve());
      thread.once('exit', () => {
        const waiting = ahead.indexOf(thread);
        if (waiting >= 0) ahead.splice(waiting, 1);
        resolve();
      });
    });
  });
  aheadLoading = Promise.all(loading).then(loaded);
  return aheadLoading;
}

/** A copy worker for `workerData`: one started ahead if one is waiting, else a new one. */
async function copyWorker(script: URL, workerData: WorkerData): Promise<Worker> {
  await aheadLoading;
  const thread = ahead.shift();
  if (!thread) return startWorker(script, workerData);
  thread.ref();
  thread.postMessage(workerData);
  return thread;
}

/** Threads to copy with, this one included: PLATTER_COPY_THREADS, else one per core up to MAX_THREADS. */
function threadCount(): number {
  const asked = Number(process.env.PLATTER_COPY_THREADS);
  if (Number.isInteger(asked) && asked >= 1) return Math.min(asked, MAX_ASKED);
  return Math.min(availableParallelism(), MAX_THREADS);
}

function chunkBytes(task: CopyTask): number {
  return Math.max(CHUNK, task.placed?.clusterSize ?? 0);
}

/**
 * Chunks a thread takes at a time. One in place; in a placed copy, a run's
 * worth, so that a run holds guest-contiguous data. One chunk at a time
 * interleaved the threads' chunks in the file: the 2 GiB bench image into
 * qcow2 came out 13% fragmented (qemu-img check), 2.3% so, 0.02% in-process.
 */
function chunksPerTake(task: CopyTask): number {
  const { placed } = task;
  return placed ? Math.max(1, Math.floor((placed.runClusters * placed.clusterSize) / chunkBytes(task))) : 1;
}

/** The chunks this thread takes, in order: each batch goes to whichever thread asks for it first. */
function* takenChunks(spans: CopySpan[], control: Int32Array, size: number, perTake: number): Generator<CopySpan> {
  let index = 0;
  let mine = Atomics.add(control, NEXT, 1);
  for (const chunk of chunksOf(spans, size)) {
    const batch = Math.floor(index++ / perTake);
    if (batch < mine) continue;
    if (batch > mine) mine = Atomics.add(control, NEXT, 1);
    if (batch === mine) yield chunk;
  }
}

/**
 * One thread's part of a threaded copy, the same on every thread: opens the
 * images (in a placed copy, the target's file) with blocking I/O, copies the
 * chunks it takes until none are left or someone sets the stop flag, and
 * reports bytes as it goes. On an error it sets the stop flag before throwing.
 */
export async function copyTakenChunks(task: CopyTask, side: ThreadSide): Promise<void> {
  const control = new Int32Array(task.control);
  const closing: (() => Promise<void>)[] = [];
  const size = chunkBytes(task);
  try {
    const sources: Image[] = [];
    for (const { filename, options } of task.sources) {
      const image = await openImage(filename, { ...options, blocking: true });
      closing.push(() => image.close());
      sources.push(image);
    }
    const spans = task.spans.map((s) => ({ ...s, source: sources[s.source] }));
    const { placed } = task;
    let copier: ChunkCopier;
    if (!placed) copier = await inPlaceCopier(task);
    else if (side.placing) copier = await placedCopier(task, placed, side.placing, size);
    else throw new Error('a placed copy needs host clusters on every thread');
    closing.push(() => copier.close());
    let turn = Date.now();
    for (const chunk of takenChunks(spans, control, size, chunksPerTake(task))) {
      if (Atomics.load(control, STOP) !== 0 || !(await copier.copy(chunk))) return;
      side.report(chunk.length);
      if (Date.now() - turn >= side.yieldEvery) {
        await nextTurn();
        turn = Date.now();
      }
    }
    await copier.finish();
  } catch (err) {
    Atomics.store(control, STOP, 1);
    throw err;
  } finally {
    for (const close of closing.reverse()) await close().catch(() => undefined);
  }
}

/** Whether this target can be copied into on threads, and how: written in place (raw), or placed (see PlacesClusters). */
function threadedTarget(spans: CopySpan[], target: Image): { placement?: ClusterPlacement } | undefined {
  if (target.plainFile) return {};
  const placement = target.clusterPlacement();
  return placement && clusterAligned(spans, placement.clusterSize) ? { placement } : undefined;
}

/**
 * What the sources and their backing chains take on their storage: about
 * the data a copy of them writes (less where they are compressed, more
 * where they hold metadata or written zeros). Undefined when some storage
 * does not tell.
 */
async function storedBytes(sources: Image[]): Promise<number | undefined> {
  const layers = new Set<Image>();
  for (const source of sources) for (let layer: Image | undefined = source; layer; layer = layer.backing) layers.add(layer);
  let total = 0;
  for (const layer of layers) {
    const size = await layer.allocatedSize();
    if (size === undefined) return undefined;
    total += size;
  }
  return total;
}

/**
 * Copies `spans` into `target` on this thread and worker threads when that
 * applies (a raw target or a new one that places clusters, sources and
 * target reopenable, no compression or rate limit, enough data); returns
 * false, having done nothing, when it does not. `script` is the worker's file (tests running
 * from source pass the built one).
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
  // A zero block (-S) must not be cut by a chunk's end, or what becomes a hole would depend on the thread count.
  const wholeZeroBlocks = CHUNK % Math.max(opts.sparseSize, 1) === 0;
  if (
    !script ||
    threads < 2 ||
    total < MIN_BYTES ||
    !targetAs ||
    opts.compress ||
    opts.rateLimit > 0 ||
    !wholeZeroBlocks ||
    sources.some((s) => !s.openedAs)
  ) {
    return false;
  }
  const how = threadedTarget(spans, target);
  if (!how) return false;
  const workers = threads - 1;
  const control = new SharedArrayBuffer(2 * Int32Array.BYTES_PER_ELEMENT);
  const words = new Int32Array(control);
  const halt = () => Atomics.store(words, STOP, 1);
  let failure: BlockError | undefined;
  const fail = (err: BlockError) => {
    failure ??= err;
    halt();
  };
  const task: CopyTask = {
    sources: sources.map((s) => s.openedAs!),
    target: { filename: targetAs.filename, options: { ...targetAs.options, readOnly: false } },
    spans: spans.map((s) => ({ ...s, source: sources.indexOf(s.source) })),
    copy: { ...opts, chunkSize: CHUNK, parallel: 1 },
    control,
  };
  let metadata: PlacementService | undefined;
  const meter = new ProgressMeter(total, ctx);
  if (ctx.signal?.aborted) halt();
  ctx.signal?.addEventListener('abort', halt);
  try {
    if (how.placement) {
      const { clusterSize } = how.placement;
      const clusters = spans.reduce((n, s) => n + Math.ceil(s.length / clusterSize), 0);
      metadata = await PlacementService.start(how.placement, target.protocol, workers, clusters, await storedBytes(sources), fail);
      task.placed = metadata.share;
    }
    const runThread = async (worker: number) => {
      let thread: Worker;
      try {
        thread = await copyWorker(script, { task, worker });
      } catch (err) {
        // No thread to be had (a resource limit): the copy stops, the threads started so far with it.
        fail(toBlockError(err, { path: target.filename }));
        return;
      }
      await new Promise<void>((resolve) => {
        thread.on('message', (m: CopyWorkerMessage) => {
          if (m.type === 'progress') meter.add(m.bytes);
          else if (m.type === 'error') {
            const { kind, message, ...context } = m.error;
            fail(new BlockError(kind, message, context));
          } else if (m.type === 'refill') void metadata?.refill(m.slot);
          else if (m.type === 'mapped') void metadata?.map(m.runs);
          else if (m.type === 'leftover') metadata?.giveBack(m.runs);
        });
        thread.on('error', (err) => fail(toBlockError(err, { path: target.filename, op: 'write' })));
        thread.on('exit', (code) => {
          const stopped = `a copy thread stopped (exit code ${code})`;
          if (code !== 0) fail(new BlockError('Io', stopped, { path: target.filename }));
          resolve();
        });
      });
    };
    const running = Array.from({ length: failure ? 0 : workers }, (_, worker) => runThread(worker));
    // This thread takes chunks too while the workers start.
    const side: ThreadSide = {
      report: (bytes) => meter.add(bytes),
      placing: metadata?.ownSide(),
      yieldEvery: metadata ? SERVE_EVERY : YIELD_EVERY,
    };
    if (!failure) await copyTakenChunks(task, side).catch((err) => fail(toBlockError(err)));
    await Promise.all(running);
    if (metadata) {
      await metadata.finish();
      // The workers wrote the file through their own handles: what this one caches of it is stale.
      await target.protocol.resync?.();
    }
  } catch (err) {
    fail(toBlockError(err, { path: target.filename }));
  } finally {
    ctx.signal?.removeEventListener('abort', halt);
  }
  throwIfAborted(ctx.signal);
  if (failure) throw failure;
  meter.finish();
  return true;
}
