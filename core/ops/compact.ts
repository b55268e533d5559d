/** compact: drop an image's stored blocks that read as zeros and pack its file (VBoxManage compact). */
import { isCompactable } from '../image/driver.js';
import { BlockError, toBlockError } from '../image/errors.js';
import { openImage } from '../image/open.js';
import { ProgressMeter, type JobContext } from './job.js';

export interface CompactOptions {
  filename: string;
  format?: string;
  allowExternalFiles?: boolean;
}

export interface CompactResult {
  /** The file's size before and after, in bytes. */
  before: number;
  after: number;
}

export async function compact(opts: CompactOptions, ctx: JobContext = {}): Promise<CompactResult> {
  const where = { path: opts.filename, op: 'compact' };
  const image = await openImage(opts.filename, {
    format: opts.format,
    readOnly: false,
    noBacking: true,
    allowExternalFiles: opts.allowExternalFiles,
  });
  try {
    const layer = image.layer;
    if (!isCompactable(layer)) throw new BlockError('Unsupported', `${image.format} images cannot be compacted`);
    // Progress in guest bytes, as the other ops report it.
    const meter = new ProgressMeter(image.size, ctx);
    let reported = 0;
    const result = await layer.compact({
      signal: ctx.signal,
      progress: (done, total) => {
        const now = Math.floor((image.size * done) / total);
        meter.add(now - reported);
        reported = now;
      },
    });
    await image.flush();
    meter.finish();
    return result;
  } catch (err) {
    throw toBlockError(err, where);
  } finally {
    await image.close();
  }
}
