/**
 * rebase: make an image name another backing file (qemu-img rebase).
 *
 * Safe mode keeps the guest content: wherever the image itself stores
 * nothing and the old backing chain reads differently from the new one, the
 * old bytes are copied into the image first; only then is the header changed.
 * Unsafe mode (-u) only rewrites the header, as a rename of the backing file.
 */
import { realpath } from 'node:fs/promises';
import { changesBacking } from '../image/driver.js';
import { BlockError, throwIfAborted, toBlockError } from '../image/errors.js';
import type { Image } from '../image/image.js';
import { openImage, resolveNamedFile } from '../image/open.js';
import { requireBackingFormat } from './create.js';
import { ProgressMeter, type JobContext } from './job.js';
import type { CacheMode } from '../io/protocol.js';
import { readGuest } from './read-ahead.js';
import { isZero } from '../io/zero.js';

export interface RebaseOptions {
  filename: string;
  format?: string;
  /** The new backing file, as the header will name it (relative to the image's folder); '' or undefined for none. */
  backing?: string;
  backingFormat?: string;
  /** Only rewrite the header (qemu-img's -u). */
  unsafe?: boolean;
  /** 'unsafe' skips the final fsyncs. */
  cache?: CacheMode;
  allowExternalFiles?: boolean;
}

/** Bytes compared at a time. */
const CHUNK = 2 << 20;
/** Differences are found at sector granularity, as qemu-img does. */
const SECTOR = 512;

export async function rebase(opts: RebaseOptions, ctx: JobContext = {}): Promise<void> {
  const backing = opts.backing || undefined;
  const where = { path: opts.filename, op: 'rebase' };
  requireBackingFormat(backing, opts.backingFormat, where);
  const image = await openImage(opts.filename, {
    format: opts.format,
    readOnly: false,
    noBacking: opts.unsafe,
    allowExternalFiles: opts.allowExternalFiles,
  });
  try {
    const layer = image.layer;
    if (!changesBacking(layer)) throw new BlockError('Unsupported', `${image.format} images cannot have a backing file`, where);
    if (!opts.unsafe) {
      const target = backing === undefined ? undefined : await openNewBacking(image, backing, opts);
      try {
        await copyDifferences(image, target, ctx);
      } finally {
        await target?.close();
      }
      // The copied data must be on disk before the header stops pointing at the old backing file.
      if (opts.cache !== 'unsafe') await image.flush();
    }
    try {
      await layer.changeBackingFile(backing, backing === undefined ? undefined : opts.backingFormat);
    } catch (err) {
      throw toBlockError(err, where);
    }
    if (opts.cache !== 'unsafe') await image.flush();
  } finally {
    await image.close();
  }
}

/**
 * Opens the new backing chain as the header will name it: relative to the
 * image's folder, with the same rules for its own backing files as any open.
 */
async function openNewBacking(image: Image, backing: string, opts: RebaseOptions): Promise<Image> {
  const where = { path: image.filename, op: 'rebase' };
  const path = resolveNamedFile(image.filename, backing);
  let target: Image;
  try {
    target = await openImage(path, { format: opts.backingFormat, allowExternalFiles: opts.allowExternalFiles });
  } catch (err) {
    const e = toBlockError(err);
    const inner = e.context.path && e.context.path !== path ? `${e.context.path}: ` : '';
    throw new BlockError(e.kind, `could not open the new backing file ${path}: ${inner}${e.message}`, where, err);
  }
  try {
    // A chain that leads back to the image would loop forever once the header names it.
    if ((await depthOf(target, image)) !== undefined || (await sameFile(target, image))) {
      throw new BlockError('InvalidArgument', `the new backing file ${backing} is, or is backed by, the image itself`, where);
    }
  } catch (err) {
    await target.close();
    throw err;
  }
  return target;
}

/**
 * Where the image stores nothing, writes the old backing chain's bytes into
 * it wherever they differ from what `target` (undefined: no backing file,
 * zeros) reads. The old bytes are read through the image itself, whose
 * unallocated ranges show the old chain.
 */
async function copyDifferences(image: Image, target: Image | undefined, ctx: JobContext): Promise<void> {
  const meter = new ProgressMeter(image.size, ctx);
  // Layers of the old chain that are the new backing file read the same in both: no need to compare there.
  const sharedDepth = target ? await depthOf(image, target) : undefined;
  const cluster = (await image.info()).clusterSize ?? SECTOR;
  const oldBuf = new Uint8Array(CHUNK);
  const newBuf = new Uint8Array(CHUNK);
  for (let at = 0; at < image.size; ) {
    throwIfAborted(ctx.signal);
    const st = await image.blockStatus(at, Math.min(CHUNK, image.size - at));
    const len = st.length;
    const own = st.present && st.depth === 0;
    const same = sharedDepth !== undefined && st.depth >= sharedDepth;
    if (!own && !same) {
      const newZero = target === undefined || (await readsAsZero(target, at, len));
      if (!(st.zero && newZero)) {
        const oldData = oldBuf.subarray(0, len);
        const newData = newBuf.subarray(0, len);
        await Promise.all([readGuest(image, oldData, at), newZero ? newData.fill(0) : readPadded(target!, newData, at)]);
        for (const run of differingRuns(oldData, newData, at, cluster)) {
          const piece = oldData.subarray(run.start, run.end);
          if (isZero(piece)) await image.writeZeroes(at + run.start, piece.length, false);
          else await image.write(piece, at + run.start);
        }
      }
    }
    at += len;
    meter.add(len);
  }
  meter.finish();
}

const real = (name: string) => realpath(name).catch(() => name);

async function sameFile(a: Image, b: Image): Promise<boolean> {
  return (await real(a.filename)) === (await real(b.filename));
}

/** How deep below `image` in its backing chain the same file as `target` is, if it is there. */
async function depthOf(image: Image, target: Image): Promise<number | undefined> {
  let depth = 1;
  for (let layer = image.backing; layer; layer = layer.backing, depth++) {
    if (await sameFile(layer, target)) return depth;
  }
  return undefined;
}

/** Whether all of [offset, offset+length) reads as zeros in `img` (zeros past its end). */
async function readsAsZero(img: Image, offset: number, length: number): Promise<boolean> {
  const end = Math.min(offset + length, img.size);
  for (let at = offset; at < end; ) {
    const st = await img.blockStatus(at, end - at);
    if (!st.zero) return false;
    at += st.length;
  }
  return true;
}

/** Reads guest bytes of `img` at `offset`, zeros past its end. */
async function readPadded(img: Image, buf: Uint8Array, offset: number): Promise<void> {
  const n = Math.max(0, Math.min(buf.length, img.size - offset));
  if (n > 0) await readGuest(img, buf.subarray(0, n), offset);
  buf.fill(0, n);
}

/**
 * Runs of sectors where `a` and `b` differ, widened to whole clusters of the
 * image (guest offsets; `base` is where the buffers start) so that writes
 * fill clusters instead of copying the rest of each one on write. Widening
 * is safe: the extra bytes are the same in both chains.
 */
function differingRuns(a: Uint8Array, b: Uint8Array, base: number, cluster: number): { start: number; end: number }[] {
  const runs: { start: number; end: number }[] = [];
  for (let i = 0; i < a.length; i += SECTOR) {
    const end = Math.min(i + SECTOR, a.length);
    if (Buffer.compare(a.subarray(i, end), b.subarray(i, end)) === 0) continue;
    const start = Math.max(0, Math.floor((base + i) / cluster) * cluster - base);
    const stop = Math.min(a.length, Math.ceil((base + end) / cluster) * cluster - base);
    const last = runs[runs.length - 1];
    if (last && start <= last.end) last.end = Math.max(last.end, stop);
    else runs.push({ start, end: stop });
  }
  return runs;
}
