/** dd: copy a block range of an image into a new image, with dd's words. */
import { BlockError } from '../image/errors.js';
import { openImage } from '../image/open.js';
import { copyIntoTarget, copyOptionsFrom } from './convert.js';
import type { JobContext } from './job.js';

export interface DdOptions {
  input: string;
  output: string;
  format?: string;
  targetFormat?: string;
  /** Block size in bytes (default 512, as qemu-img dd). */
  blockSize?: number;
  /** Blocks to copy; all that remain when omitted. */
  count?: number;
  allowExternalFiles?: boolean;
  /** Input blocks to skip first. */
  skip?: number;
}

export async function dd(opts: DdOptions, ctx: JobContext = {}): Promise<{ size: number }> {
  const bs = opts.blockSize ?? 512;
  if (!Number.isSafeInteger(bs) || bs <= 0) throw new BlockError('InvalidArgument', 'bs must be a positive size');
  const source = await openImage(opts.input, { format: opts.format, allowExternalFiles: opts.allowExternalFiles });
  try {
    const start = (opts.skip ?? 0) * bs;
    if (!Number.isSafeInteger(start) || start > source.size) {
      throw new BlockError('InvalidArgument', `cannot skip past the end of the input (${opts.skip} blocks of ${bs} bytes)`, {
        path: opts.input,
      });
    }
    const available = source.size - start;
    const length = opts.count === undefined ? available : Math.min(available, opts.count * bs);
    await copyIntoTarget(
      [{ source, sourceOffset: start, length, targetOffset: 0 }],
      length,
      { target: opts.output, targetFormat: opts.targetFormat ?? 'raw' },
      copyOptionsFrom({}),
      ctx,
    );
    return { size: length };
  } finally {
    await source.close();
  }
}
