/** measure: how much room a new image of some format would need. */
import { BlockError, throwIfAborted } from '../image/errors.js';
import type { Image } from '../image/image.js';
import { openImage } from '../image/open.js';
import { createOptionsOf, findDriver } from '../image/registry.js';
import { resolveOptions } from '../options/schema.js';
import type { PersistentBitmap, SnapshotKey } from '../image/driver.js';
import type { JobContext } from './job.js';

export interface MeasureOptions {
  targetFormat: string;
  options?: Record<string, string>;
  /** Measure for an empty image of this size ... */
  size?: number;
  /** ... or for a copy of this image (of this internal snapshot of it). */
  filename?: string;
  format?: string;
  snapshot?: SnapshotKey;
  allowExternalFiles?: boolean;
}

/** `qemu-img measure --output=json`'s object. */
export interface MeasureResult {
  bitmaps?: number;
  required: number;
  'fully-allocated': number;
}

interface Extent {
  offset: number;
  length: number;
}

/** The ranges of `image` holding data other than zeros, neighbours merged. */
async function storedExtents(image: Image, ctx: JobContext): Promise<Extent[]> {
  const extents: Extent[] = [];
  for (let at = 0; at < image.size; ) {
    throwIfAborted(ctx.signal);
    const st = await image.blockStatus(at, image.size - at);
    const last = extents[extents.length - 1];
    const stored = st.data && !st.zero;
    if (stored && last && last.offset + last.length === at) last.length += st.length;
    else if (stored) extents.push({ offset: at, length: st.length });
    at += st.length;
  }
  return extents;
}

export async function measure(opts: MeasureOptions, ctx: JobContext = {}): Promise<MeasureResult> {
  if ((opts.size === undefined) === (opts.filename === undefined)) {
    throw new BlockError('InvalidArgument', 'give either a size or an image to measure, not both');
  }
  const driver = findDriver(opts.targetFormat);
  if (!driver.measure) throw new BlockError('Unsupported', `${driver.name} images cannot be measured yet`);
  const values = resolveOptions(createOptionsOf(driver), { ...opts.options }, driver.name);
  let size = opts.size ?? 0;
  let bitmaps: readonly PersistentBitmap[] | undefined;
  let extents: Extent[] = [];
  if (opts.filename !== undefined) {
    const image = await openImage(opts.filename, { format: opts.format, allowExternalFiles: opts.allowExternalFiles, snapshot: opts.snapshot });
    try {
      size = image.size;
      bitmaps = (await image.info()).bitmaps;
      // A new image over a backing file of its own may share nothing with the
      // source: every cluster may have to be written (QEMU assumes so too).
      extents = values.backing_file === undefined ? await storedExtents(image, ctx) : [{ offset: 0, length: size }];
    } finally {
      await image.close();
    }
  }
  const m = driver.measure(size, extents, values, bitmaps);
  // Key order as qemu-img prints it.
  return { ...(m.bitmaps !== undefined && { bitmaps: m.bitmaps }), required: m.required, 'fully-allocated': m.fullyAllocated };
}
