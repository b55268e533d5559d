/**
 * The copy pipeline under convert and dd: block status -> read -> zero
 * detection -> write, with several chunks in flight. Ranges the source knows
 * to be zero are never read, and zeros are not written to a target that
 * already reads as zeros.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockError } from '../image/errors.js';
import type { Image } from '../image/image.js';
import { giveBuffer, takeBuffer } from '../io/buffers.js';
import { readGuest } from './read-ahead.js';
import { ProgressMeter, runWorkers, type JobContext } from './job.js';
import { zeroRuns, type Run } from './zero-runs.js';

/** A piece of a source image, placed at `targetOffset` in the target. */
export interface CopySpan {
  source: Image;
  sourceOffset: number;
  length: number;
  targetOffset: number;
}

export interface CopyOptions {
  /**
   * Zero runs at least this long (and aligned) become holes; 0 writes every
   * byte, zeros the source does not store included (qemu-img's -S 0: a
   * fully allocated target), except what a target's backing file holds.
   */
  sparseSize: number;
  /**
   * Chunks in flight (qemu-img's -m); by default 8, or 3 when the target
   * compresses what it stores: compressing keeps both cores busy with fewer,
   * and each chunk in flight holds its compressed copy too.
   */
  parallel?: number;
  /**
   * Let writes start out of order (qemu-img's -W). In order, each chunk's
   * writes start once the previous chunk's have started, so the target is
   * laid out in guest order; they may still be in flight together.
   */
  outOfOrder: boolean;
  /** The target already reads as zeros (a new image, or --target-is-zero). */
  targetIsZero: boolean;
  /**
   * The target reads from a backing file holding what the sources' backing
   * files hold (convert -B, or -o backing_file): only what each source's own
   * layer stores is copied, zeros included, as qemu-img convert does.
   */
  targetHasBacking: boolean;
  /** Bytes per request. */
  chunkSize: number;
  /** Bytes per second at most (qemu-img's -r); 0 for no limit. */
  rateLimit: number;
  /** Store data compressed (qemu-img convert -c); the target must support it. */
  compress: boolean;
}

const DEFAULT_PARALLEL = 8;
const COMPRESSING_PARALLEL = 3;

export const DEFAULT_COPY_OPTIONS: CopyOptions = {
  sparseSize: 4096,
  outOfOrder: false,
  targetIsZero: false,
  targetHasBacking: false,
  chunkSize: 2 << 20,
  rateLimit: 0,
  compress: false,
};

/**
 * Keeps a copy at or below `rate` bytes per second by making each chunk wait
 * until the bytes before it were due.
 */
class Throttle {
  private readonly start = Date.now();
  private admitted = 0;
  constructor(private readonly rate: number) {}

  async admit(bytes: number, signal?: AbortSignal): Promise<void> {
    if (this.rate <= 0) return;
    const due = this.start + (this.admitted / this.rate) * 1000;
    this.admitted += bytes;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait, undefined, { signal });
  }
}

/** Splits spans into chunks that never cross a span (or chunk-size) boundary. */
export function* chunksOf(spans: CopySpan[], chunkSize: number): Generator<CopySpan> {
  for (const span of spans) {
    for (let at = 0; at < span.length; ) {
      // Align chunk ends to the target's chunk grid, so requests stay aligned.
      const target = span.targetOffset + at;
      const len = Math.min(chunkSize - (target % chunkSize), span.length - at);
      yield { source: span.source, sourceOffset: span.sourceOffset + at, length: len, targetOffset: target };
      at += len;
    }
  }
}

/**
 * Reads `chunk` into `buf` and says, in order, which of its bytes are data
 * and which are zeros (chunk-relative runs). What the source's block status
 * calls zero is not read: those bytes of `buf` keep what they held, or,
 * with a `sparseSize` of 0, are zeroed and called data. With a
 * `sparseSize` (-S), runs of whole zero blocks among the bytes read are
 * zeros too. With `targetHasBacking`, bytes the source's backing files
 * answer for are in no run: the target's backing file holds them.
 */
export async function readChunk(
  chunk: CopySpan,
  buf: Uint8Array,
  { sparseSize, targetHasBacking }: Pick<CopyOptions, 'sparseSize' | 'targetHasBacking'>,
): Promise<Run[]> {
  const runs: Run[] = [];
  for (let at = 0; at < chunk.length; ) {
    const st = await chunk.source.blockStatus(chunk.sourceOffset + at, chunk.length - at);
    if (targetHasBacking && st.depth > 0) {
      at += st.length;
      continue;
    }
    if (st.zero && sparseSize === 0) {
      buf.fill(0, at, at + st.length);
      runs.push({ start: at, length: st.length, zero: false });
    } else if (st.zero) runs.push({ start: at, length: st.length, zero: true });
    else {
      const data = buf.subarray(at, at + st.length);
      await chunk.source.read(data, chunk.sourceOffset + at);
      if (sparseSize === 0) runs.push({ start: at, length: st.length, zero: false });
      else for (const r of zeroRuns(data, chunk.targetOffset + at, sparseSize)) runs.push({ ...r, start: at + r.start });
    }
    at += st.length;
  }
  return runs;
}

/**
 * The parts of a chunk its source's own layer answers for, widened to whole
 * clusters of the target (chunk-relative, in order): what a compressed copy
 * into a target with a backing file writes, since it stores whole clusters.
 */
async function ownClusters(chunk: CopySpan, cluster: number): Promise<{ start: number; length: number }[]> {
  const windows: { start: number; length: number }[] = [];
  for (let at = 0; at < chunk.length; ) {
    const st = await chunk.source.blockStatus(chunk.sourceOffset + at, chunk.length - at);
    if (st.depth === 0) {
      const from = chunk.targetOffset + at;
      const start = Math.max(0, Math.floor(from / cluster) * cluster - chunk.targetOffset);
      const end = Math.min(chunk.length, Math.ceil((from + st.length) / cluster) * cluster - chunk.targetOffset);
      const last = windows[windows.length - 1];
      if (last && start <= last.start + last.length) last.length = Math.max(last.length, end - last.start);
      else windows.push({ start, length: end - start });
    }
    at += st.length;
  }
  return windows;
}

/**
 * Writes one run of a chunk (as readChunk describes it, its bytes in `buf`)
 * into the target: the bytes, or zeros unless the target already reads as
 * zeros; zeros become holes where -S allows.
 *
 * Data going into a target that reads as zeros (a new file: the run lands
 * in a hole) has its blocks allocated first where the target takes that
 * (a raw file, Image.allocate): ext4 then skips reserving each block of
 * the write on its own (see FileProtocol.allocate). 2 GiB bench image,
 * `-t unsafe`, 11 alternating runs: qcow2->raw 674 -> 594 ms (system CPU
 * 736 -> 547 ms), raw->raw 587 -> 480 ms; on one thread 870 -> 797 ms.
 * Only data is allocated, so the target is as sparse as before (checked
 * in convert.test.ts). The cost is in the layout: ext4 fits small runs
 * into gaps near them instead of packing them in order at write-back
 * (the bench image's copy: 841 extents, 288 of them placed backwards,
 * instead of 316 and 1; 20 KiB more of extent tree).
 */
export async function writeRun(target: Image, chunk: CopySpan, buf: Uint8Array, run: Run, opts: CopyOptions): Promise<void> {
  const dst = chunk.targetOffset + run.start;
  if (run.zero) {
    if (!opts.targetIsZero) await target.writeZeroes(dst, run.length, opts.sparseSize > 0);
    return;
  }
  if (opts.targetIsZero) await target.allocate(dst, run.length);
  await target.write(buf.subarray(run.start, run.start + run.length), dst);
}

export async function copySpans(spans: CopySpan[], target: Image, opts: CopyOptions, ctx: JobContext): Promise<void> {
  const total = spans.reduce((n, s) => n + s.length, 0);
  const meter = new ProgressMeter(total, ctx);
  const cluster = opts.compress ? target.compressionCluster : undefined;
  if (opts.compress && !cluster) {
    throw new BlockError('Unsupported', `${target.format} images cannot store compressed data`, { path: target.filename });
  }
  // Compressed chunks are whole clusters of the target.
  const chunkSize = cluster ? Math.ceil(opts.chunkSize / cluster) * cluster : opts.chunkSize;
  const chunks = chunksOf(spans, chunkSize);
  const throttle = new Throttle(opts.rateLimit);
  // Writes wait for the previous chunk's writes to start unless out-of-order is allowed.
  let lastIssued: Promise<void> = Promise.resolve();

  await runWorkers(
    Math.max(1, opts.parallel ?? (cluster || target.compressesWrites ? COMPRESSING_PARALLEL : DEFAULT_PARALLEL)),
    () => {
      const r = chunks.next();
      return r.done ? undefined : r.value;
    },
    async (chunk) => {
      const prev = lastIssued;
      let issued!: () => void;
      lastIssued = new Promise<void>((resolve) => (issued = resolve));
      const buf = takeBuffer(chunkSize);
      try {
        await throttle.admit(chunk.length, ctx.signal);
        const writes: (() => Promise<void>)[] = [];
        if (cluster) {
          // Compression happens here, in parallel; only the stores wait their turn.
          const windows = opts.targetHasBacking ? await ownClusters(chunk, cluster) : [{ start: 0, length: chunk.length }];
          for (const w of windows) {
            const data = buf.subarray(w.start, w.start + w.length);
            await readGuest(chunk.source, data, chunk.sourceOffset + w.start);
            // -S 0: zero clusters are stored (compressed) too, as qemu-img does.
            const runs = opts.sparseSize === 0 ? [{ start: 0, length: w.length, zero: false }] : zeroRuns(data, chunk.targetOffset + w.start, cluster);
            for (const run of runs) {
              const inChunk = { ...run, start: w.start + run.start };
              const dst = chunk.targetOffset + inChunk.start;
              if (run.zero) writes.push(() => writeRun(target, chunk, buf, inChunk, opts));
              else writes.push(await target.compressClusters(data.subarray(run.start, run.start + run.length), dst));
            }
          }
        } else {
          for (const run of await readChunk(chunk, buf, opts)) writes.push(() => writeRun(target, chunk, buf, run, opts));
        }
        if (!opts.outOfOrder) await prev;
        // A chunk's writes cover distinct bytes: they go out together, and
        // the buffer is only given back once every one has settled.
        const pending = writes.map((w) => w());
        issued();
        const results = await Promise.allSettled(pending);
        const failed = results.find((r) => r.status === 'rejected');
        if (failed) throw failed.reason;
        meter.add(chunk.length);
      } finally {
        issued();
        // This chunk's I/O has settled: the buffer can serve another.
        giveBuffer(buf);
      }
    },
    ctx.signal,
  );
  meter.finish();
}
