/** snapshot: list, create, apply and delete internal snapshots. */
import { hasSnapshots, type SnapshotInfo } from '../image/driver.js';
import { BlockError } from '../image/errors.js';
import { openImage } from '../image/open.js';
import type { Image } from '../image/image.js';
import type { JobContext } from './job.js';

export type SnapshotAction =
  | { op: 'list' }
  | { op: 'create'; name: string }
  | { op: 'apply'; name: string }
  | { op: 'delete'; name: string };

export interface SnapshotOptions {
  filename: string;
  format?: string;
  action: SnapshotAction;
}

/** The snapshots of an open image (empty for formats without them). */
export function listSnapshots(image: Image): SnapshotInfo[] {
  return hasSnapshots(image.layer) ? image.layer.listSnapshots() : [];
}

export async function snapshot(opts: SnapshotOptions, _ctx: JobContext = {}): Promise<SnapshotInfo[]> {
  const readOnly = opts.action.op === 'list';
  // Snapshots live in this image alone: its backing file is not needed.
  const image = await openImage(opts.filename, { format: opts.format, readOnly, noBacking: true });
  try {
    const layer = image.layer;
    if (!hasSnapshots(layer)) {
      throw new BlockError('Unsupported', `${image.format} images have no internal snapshots`, { path: opts.filename });
    }
    const a = opts.action;
    if (a.op === 'create') await layer.createSnapshot(a.name);
    else if (a.op === 'apply') await layer.applySnapshot(a.name);
    else if (a.op === 'delete') await layer.deleteSnapshot(a.name);
    if (!readOnly) await image.flush();
    return layer.listSnapshots();
  } catch (err) {
    if (err instanceof BlockError && !err.context.path) throw err.withContext({ path: opts.filename });
    throw err;
  } finally {
    await image.close();
  }
}
