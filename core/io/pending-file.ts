/**
 * A new output file that appears under its real name only when complete:
 * written under a hidden temporary name in the same folder, flushed, then
 * renamed over the target. Cancelling or failing removes the temporary file,
 * so no half-written image is ever left where the user looks.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { toBlockError } from '../image/errors.js';

export class PendingFile {
  readonly tempPath: string;

  constructor(readonly finalPath: string) {
    const suffix = randomBytes(4).toString('hex');
    this.tempPath = join(dirname(finalPath), `.${basename(finalPath)}.platter-${suffix}.tmp`);
  }

  /** Moves the finished file into place; the caller has flushed and closed it. */
  async commit({ durable } = { durable: true }): Promise<void> {
    try {
      await fsp.rename(this.tempPath, this.finalPath);
      if (durable) await syncDir(dirname(this.finalPath));
    } catch (err) {
      await this.discard();
      throw toBlockError(err, { path: this.finalPath, op: 'rename' });
    }
  }

  /** Removes the temporary file; never throws. */
  async discard(): Promise<void> {
    await fsp.rm(this.tempPath, { force: true }).catch(() => undefined);
  }
}

/** Makes a rename durable. Folders cannot be opened for sync on Windows. */
async function syncDir(dir: string): Promise<void> {
  if (process.platform === 'win32') return;
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
