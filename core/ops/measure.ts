/** measure: how much room a new image of some format would need. */
import { BlockError, throwIfAborted } from '../image/errors.js';
import { openImage } from '../image/open.js';
import { createOptionsOf, findDriver } from '../image/registry.js';
import { resolveOptions } from '../options/schema.js';
import type { PersistentBitmap } from '../image/driver.js';
import type { JobContext } from './job.js';

export interface MeasureOptions {
  targetFormat: string;
  options?: Record<string, string>;
  /** Measure for an empty image of this size ... */
  size?: number;
  /** ... or for a copy of this image. */
  filename?: string;
  format?: string;
  allowExternalFiles?: boolean;
}

/** `qemu-img measure --output=json`'s object. */
export interface MeasureResult {
  bitmaps?: number;
  required: number;
  'fully-allocated': number;
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
  const extents: { offset: number; length: number }[] = [];
  if (opts.filename !== undefined) {
    const image = await openImage(opts.filename, { format: opts.format, allowExternalFiles: opts.allowExternalFiles });
    try {
      size = image.size;
      bitmaps = (await image.info()).bitmaps;
      for (let at = 0; at < size; ) {
        throwIfAborted(ctx.signal);
        const st = await image.blockStatus(at, size - at);
        const last = extents[extents.length - 1];
        const stored = st.data && !st.zero;
        if (stored && last && last.offset + last.length === at) last.length += st.length;
        else if (stored) extents.push({ offset: at, length: st.length });
        at += st.length;
      }
    } finally {
      await image.close();
    }
  }
  const m = driver.measure(size, extents, values, bitmaps);
  // Key order as qemu-img prints it.
  return { ...(m.bitmaps !== undefined && { bitmaps: m.bitmaps }), required: m.required, 'fully-allocated': m.fullyAllocated };
}
