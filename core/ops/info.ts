/** info: what an image is, in qemu-img's key names. */
import { openImage } from '../image/open.js';
import type { JobContext } from './job.js';

/** `qemu-img info --output=json`'s object, key for key. */
export interface ImageInfo {
  'virtual-size': number;
  filename: string;
  format: string;
  'actual-size'?: number;
  'dirty-flag': boolean;
  'cluster-size'?: number;
  'format-specific'?: { type: string; data: Record<string, unknown> };
}

export async function info(opts: { filename: string; format?: string }, _ctx: JobContext = {}): Promise<ImageInfo> {
  const image = await openImage(opts.filename, { format: opts.format });
  try {
    const details = await image.info();
    const actual = await image.protocol.allocatedSize();
    const out: ImageInfo = {
      'virtual-size': image.size,
      filename: opts.filename,
      format: image.format,
    } as ImageInfo;
    if (actual !== undefined) out['actual-size'] = actual;
    out['dirty-flag'] = details.dirty ?? false;
    if (details.clusterSize !== undefined) out['cluster-size'] = details.clusterSize;
    if (details.specific) out['format-specific'] = details.specific;
    return out;
  } finally {
    await image.close();
  }
}
