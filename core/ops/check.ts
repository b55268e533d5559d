/** check: are an image's metadata consistent? Optionally repair them. */
import { isCheckable, type CheckReport, type RepairMode } from '../image/driver.js';
import { BlockError } from '../image/errors.js';
import { openImage } from '../image/open.js';
import type { JobContext } from './job.js';

export interface CheckOptions {
  filename: string;
  format?: string;
  repair?: RepairMode;
  allowExternalFiles?: boolean;
  /** Receives one line per problem found or fixed. */
  log?: (line: string) => void;
}

export interface CheckResult extends CheckReport {
  filename: string;
  format: string;
}

export async function check(opts: CheckOptions, _ctx: JobContext = {}): Promise<CheckResult> {
  const repair = opts.repair ?? 'none';
  // Repairs write; a plain check never does, and does not need the backing chain.
  const image = await openImage(opts.filename, {
    format: opts.format,
    readOnly: repair === 'none',
    repair: repair !== 'none',
    forCheck: true,
    noBacking: true,
    allowExternalFiles: opts.allowExternalFiles,
  });
  try {
    const layer = image.layer;
    if (!isCheckable(layer)) {
      throw new BlockError('Unsupported', `${image.format} images have no metadata to check`, { path: opts.filename, op: 'check' });
    }
    const report = await layer.check(repair, opts.log ?? (() => undefined));
    return { ...report, filename: opts.filename, format: image.format };
  } catch (err) {
    if (err instanceof BlockError && !err.context.path) throw err.withContext({ path: opts.filename });
    throw err;
  } finally {
    await image.close();
  }
}
