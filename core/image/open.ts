/** Opening and creating images by name. */
import { openProtocol } from '../io/open.js';
import { PendingFile } from '../io/pending-file.js';
import type { Protocol } from '../io/protocol.js';
import { type OptionValues } from '../options/schema.js';
import { hasBacking, type FormatDriver } from './driver.js';
import { BlockError, toBlockError } from './errors.js';
import { Image } from './image.js';
import { readProbeInput } from './probe.js';
import { findDriver, probeDriver } from './registry.js';

export interface OpenOptions {
  /** The format; probed from the content when omitted. */
  format?: string;
  readOnly?: boolean;
  /** The name messages use, when `filename` is a temporary file. */
  displayName?: string;
}

/** Opens an image (and, once formats have them, its backing chain). */
export async function openImage(filename: string, opts: OpenOptions = {}): Promise<Image> {
  const readOnly = opts.readOnly ?? true;
  const explicit = opts.format ? findDriver(opts.format) : undefined;
  const name = opts.displayName ?? filename;
  const proto = await openProtocol(filename, { readOnly, displayName: name });
  try {
    const driver = explicit ?? probeDriver(await readProbeInput(proto));
    const layer = await driver.open(proto, { readOnly });
    if (layer.backingRef || hasBacking(layer)) {
      await layer.close();
      throw new BlockError('Unsupported', 'backing files are not supported yet', { path: name, op: 'open' });
    }
    return new Image(name, driver, layer, proto);
  } catch (err) {
    await proto.close();
    throw toBlockError(err, { path: name, op: 'open' });
  }
}

/**
 * Writes a new, empty image of `driver`'s format into an open protocol.
 * Options must already be resolved against the driver's declarations.
 */
export async function formatImage(proto: Protocol, driver: FormatDriver, size: number, options: OptionValues): Promise<void> {
  if (!driver.create) {
    throw new BlockError('Unsupported', `${driver.name} images cannot be created (read-only format)`, {
      path: proto.name,
      op: 'create',
    });
  }
  await driver.create(proto, { size, options });
}

/** A newly created image, open for writing under a temporary name until committed. */
export interface NewImage {
  image: Image;
  /**
   * Flushes, closes and moves the image into place. With `durable: false`
   * (qemu-img's -t unsafe) nothing is fsynced: faster, but a power cut soon
   * after may lose the data.
   */
  commit(opts?: { durable: boolean }): Promise<void>;
  /** Closes and deletes it; never throws. */
  abort(): Promise<void>;
}

/**
 * Creates an image at `path` that only appears there once `commit` is called
 * (see PendingFile). Options must already be resolved against the driver.
 */
export async function createImage(
  path: string,
  driver: FormatDriver,
  size: number,
  options: OptionValues,
): Promise<NewImage> {
  const pending = new PendingFile(path);
  try {
    const proto = await openProtocol(pending.tempPath, { readOnly: false, create: true, displayName: path });
    try {
      await formatImage(proto, driver, size, options);
    } finally {
      await proto.close();
    }
    const image = await openImage(pending.tempPath, { format: driver.name, readOnly: false, displayName: path });
    return {
      image,
      async commit({ durable } = { durable: true }) {
        try {
          if (durable) await image.flush();
        } finally {
          await image.close();
        }
        await pending.commit({ durable });
      },
      async abort() {
        await image.close().catch(() => undefined);
        await pending.discard();
      },
    };
  } catch (err) {
    await pending.discard();
    throw toBlockError(err, { path, op: 'create' });
  }
}
