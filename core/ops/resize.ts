/** resize: change an image's virtual size. */
import { isResizable, type ResizePreallocation } from '../image/driver.js';
import { BlockError, toBlockError } from '../image/errors.js';
import { openImage } from '../image/open.js';
import type { JobContext } from './job.js';

export interface ResizeOptions {
  filename: string;
  format?: string;
  /** The new size, or a change of size when `relative`. */
  size: number;
  relative?: boolean;
  /** Shrinking loses data; it must be asked for (qemu-img's --shrink). */
  shrink?: boolean;
  preallocation?: ResizePreallocation;
  allowExternalFiles?: boolean;
}

export async function resize(opts: ResizeOptions, _ctx: JobContext = {}): Promise<{ size: number }> {
  const image = await openImage(opts.filename, { format: opts.format, readOnly: false, allowExternalFiles: opts.allowExternalFiles });
  try {
    const size = opts.relative ? image.size + opts.size : opts.size;
    const ctx = { path: opts.filename, op: 'resize' };
    // qemu-img's rule too: a size of 0 would only lose the data.
    if (!Number.isSafeInteger(size) || size <= 0) throw new BlockError('InvalidArgument', 'the new size must be positive', ctx);
    if (size < image.size && !opts.shrink) {
      throw new BlockError('InvalidArgument', 'shrinking deletes the data past the new end; use --shrink to do it', ctx);
    }
    if (opts.preallocation && opts.preallocation !== 'off' && size <= image.size) {
      throw new BlockError('InvalidArgument', 'preallocation only applies when growing an image', ctx);
    }
    const layer = image.layer;
    // qemu-img's words.
    if (!isResizable(layer)) throw new BlockError('Unsupported', 'Image format driver does not support resize', ctx);
    try {
      await layer.resize(size, { prealloc: opts.preallocation ?? 'off', shrink: opts.shrink ?? false });
    } catch (err) {
      throw toBlockError(err, ctx);
    }
    await image.flush();
    return { size };
  } finally {
    await image.close();
  }
}
