/** create: a new, empty image. */
import { BlockError, toBlockError } from '../image/errors.js';
import { createImage } from '../image/open.js';
import { findDriver } from '../image/registry.js';
import { parseSize } from '../options/size.js';
import { resolveOptions, type OptionValues } from '../options/schema.js';
import type { JobContext } from './job.js';

export interface CreateOptions {
  filename: string;
  format?: string;
  /** The virtual size in bytes; may also come as the `size` option. */
  size?: number;
  options?: Record<string, string>;
}

export async function create(opts: CreateOptions, _ctx: JobContext = {}): Promise<{ size: number; options: OptionValues }> {
  try {
    return await createFile(opts);
  } catch (err) {
    throw toBlockError(err, { path: opts.filename, op: 'create' });
  }
}

async function createFile(opts: CreateOptions): Promise<{ size: number; options: OptionValues }> {
  const driver = findDriver(opts.format ?? 'raw');
  if (!driver.create) throw new BlockError('Unsupported', `${driver.name} images cannot be created (read-only format)`);
  const given = { ...opts.options };
  const values = resolveOptions(driver.createOptions ?? [], given, driver.name);
  const size = opts.size ?? (given.size !== undefined ? parseSize(given.size) : undefined);
  if (size === undefined) throw new BlockError('InvalidArgument', 'the image size must be given', { path: opts.filename });
  const created = await createImage(opts.filename, driver, size, values);
  try {
    await created.commit();
  } catch (err) {
    await created.abort();
    throw err;
  }
  return { size, options: values };
}
