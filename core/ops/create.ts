/** create: a new, empty image. */
import { BlockError, toBlockError, type ErrorContext } from '../image/errors.js';
import { createImage, openImage, resolveNamedFile } from '../image/open.js';
import { createOptionsOf, findDriver } from '../image/registry.js';
import { parseSize } from '../options/size.js';
import { resolveOptions, type OptionValues } from '../options/schema.js';
import type { JobContext } from './job.js';

export interface CreateOptions {
  filename: string;
  format?: string;
  /** The virtual size in bytes; may also come as the `size` option, or from the backing file. */
  size?: number;
  options?: Record<string, string>;
  /** Don't open the backing file (qemu-img's -u): it may not exist yet. */
  unsafe?: boolean;
  allowExternalFiles?: boolean;
}

export async function create(opts: CreateOptions, _ctx: JobContext = {}): Promise<{ size: number; options: OptionValues }> {
  try {
    return await createFile(opts);
  } catch (err) {
    throw toBlockError(err, { path: opts.filename, op: 'create' });
  }
}

/** A backing file's format is given, never probed: a probed format written into a header is a security hole. */
export function requireBackingFormat(backing: unknown, format: unknown, where?: ErrorContext): void {
  if (backing !== undefined && format === undefined) {
    throw new BlockError('InvalidArgument', 'a backing file needs its format too (-F FMT)', where);
  }
}

async function createFile(opts: CreateOptions): Promise<{ size: number; options: OptionValues }> {
  const driver = findDriver(opts.format ?? 'raw');
  if (!driver.create) throw new BlockError('Unsupported', `${driver.name} images cannot be created (read-only format)`);
  const given = { ...opts.options };
  const values = resolveOptions(createOptionsOf(driver), given, driver.name);
  if (opts.size !== undefined && given.size !== undefined) {
    throw new BlockError('InvalidArgument', 'the image size must be given only once (as an argument or as -o size)', { path: opts.filename });
  }
  let size = opts.size ?? (given.size !== undefined ? parseSize(given.size) : undefined);
  const backing = typeof values.backing_file === 'string' ? values.backing_file : undefined;
  requireBackingFormat(backing, values.backing_fmt);
  if (backing !== undefined) {
    if (!opts.unsafe) {
      // The backing file must open, and gives the size when none was given.
      const base = await openImage(resolveNamedFile(opts.filename, backing), {
        format: String(values.backing_fmt),
        allowExternalFiles: opts.allowExternalFiles,
      });
      size ??= base.size;
      await base.close();
    }
  }
  if (size === undefined) throw new BlockError('InvalidArgument', 'the image size must be given', { path: opts.filename });
  const created = await createImage(opts.filename, driver, size, values, { noBacking: opts.unsafe });
  try {
    await created.commit();
  } catch (err) {
    await created.abort();
    throw err;
  }
  return { size, options: values };
}
