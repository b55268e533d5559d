/** amend: change the format options of an existing image in place (qemu-img amend). */
import { isAmendable } from '../image/driver.js';
import { BlockError, toBlockError } from '../image/errors.js';
import { openImage } from '../image/open.js';
import { resolveOptions } from '../options/schema.js';
import { ProgressMeter, type JobContext } from './job.js';

export interface AmendOptions {
  filename: string;
  format?: string;
  /** The -o options as given (name -> text); only these change. */
  options: Record<string, string>;
  allowExternalFiles?: boolean;
}

export async function amend(opts: AmendOptions, ctx: JobContext = {}): Promise<void> {
  const where = { path: opts.filename, op: 'amend' };
  const image = await openImage(opts.filename, { format: opts.format, readOnly: false, allowExternalFiles: opts.allowExternalFiles });
  try {
    const layer = image.layer;
    const decls = image.driver.amendOptions;
    if (!decls || !isAmendable(layer)) {
      throw new BlockError('Unsupported', `format driver '${image.format}' does not support option amendment`);
    }
    for (const name of Object.keys(opts.options)) {
      if (!decls.some((d) => d.name === name) && image.driver.createOptions?.some((d) => d.name === name)) {
        throw new BlockError('Unsupported', `option '${name}' can only be set when the image is created; amend cannot change it`);
      }
    }
    const values = resolveOptions(decls, opts.options, image.format);
    // Progress in guest bytes, as the other ops report it.
    const meter = new ProgressMeter(image.size, ctx);
    let reported = 0;
    await layer.amend(values, (done, total) => {
      const now = Math.floor((image.size * done) / total);
      meter.add(now - reported);
      reported = now;
    });
    await image.flush();
    meter.finish();
  } catch (err) {
    throw toBlockError(err, where);
  } finally {
    await image.close();
  }
}
