/** info: what an image is, in qemu-img's key names and order. */
import { openImage, resolveNamedFile, type OpenOptions } from '../image/open.js';
import type { Image } from '../image/image.js';
import type { SnapshotInfo } from '../image/driver.js';
import type { JobContext } from './job.js';
import { listSnapshots } from './snapshot.js';

/** `qemu-img info --output=json`'s object, key for key. */
export interface ImageInfo {
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfo[];
  'virtual-size': number;
  filename: string;
  'cluster-size'?: number;
  format: string;
  'actual-size'?: number;
  'format-specific'?: { type: string; data: Record<string, unknown> };
  'full-backing-filename'?: string;
  'backing-filename'?: string;
  'dirty-flag': boolean;
}

export interface InfoOptions extends Pick<OpenOptions, 'allowExternalFiles'> {
  filename: string;
  format?: string;
  /** Describe every image of the backing chain, top first. */
  backingChain?: boolean;
}

export async function info(opts: InfoOptions, _ctx: JobContext = {}): Promise<ImageInfo[]> {
  const image = await openImage(opts.filename, {
    format: opts.format,
    allowExternalFiles: opts.allowExternalFiles,
    // Nothing of the backing file is shown unless asked for: an image whose backing file is missing is described, as qemu-img does.
    noBacking: !opts.backingChain,
  });
  try {
    const out: ImageInfo[] = [];
    for (let layer: Image | undefined = image; layer; layer = opts.backingChain ? layer.backing : undefined) {
      out.push(await describe(layer));
    }
    return out;
  } finally {
    await image.close();
  }
}

async function describe(image: Image): Promise<ImageInfo> {
  const details = await image.info();
  const actual = await image.allocatedSize();
  const ref = image.layer.backingRef;
  // Built key by key so JSON.stringify prints qemu-img's order.
  const out = {} as ImageInfo;
  if (ref?.format !== undefined) out['backing-filename-format'] = ref.format;
  const snapshots = listSnapshots(image);
  if (snapshots.length) out.snapshots = snapshots;
  out['virtual-size'] = image.size;
  out.filename = image.filename;
  if (details.clusterSize !== undefined) out['cluster-size'] = details.clusterSize;
  out.format = image.format;
  if (actual !== undefined) out['actual-size'] = actual;
  if (details.specific) out['format-specific'] = details.specific;
  if (ref) {
    out['full-backing-filename'] = resolveNamedFile(image.filename, ref.filename);
    out['backing-filename'] = ref.filename;
  }
  out['dirty-flag'] = details.dirty ?? false;
  return out;
}
