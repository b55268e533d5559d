/** Opening and creating images by name. */
import { realpath, rm, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { openProtocol } from '../io/open.js';
import { PendingFile } from '../io/pending-file.js';
import type { CacheMode, Protocol } from '../io/protocol.js';
import { type OptionValues } from '../options/schema.js';
import { hasBacking, hasSnapshots, type FormatDriver, type SnapshotKey } from './driver.js';
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
  /**
   * Let backing files outside the image's folder be opened. Off by default:
   * an image must not make Platter read a file the user did not choose.
   */
  allowExternalFiles?: boolean;
  /** Open only this layer, ignoring its backing file (qemu-img's -u). */
  noBacking?: boolean;
  /** Read an internal snapshot instead of the current content (read-only). */
  snapshot?: SnapshotKey;
  /** Open to repair (check -r): formats allow this even on images marked corrupt. */
  repair?: boolean;
  /** Opened by check: damage the format refuses at open is left for check to report. */
  forCheck?: boolean;
  /** How writes reach the disk; 'unsafe' makes flushes no-ops (qemu-img's -t). */
  cache?: CacheMode;
  /** Blocking reads and writes on this thread, for every file of the chain (see FileOpenOptions). */
  blocking?: boolean;
}

/** Backing chains deeper than this are refused (they are loops or mistakes). */
export const MAX_BACKING_DEPTH = 64;

/**
 * Where a file named in an image's header (its backing file, its data file)
 * is: relative names against the image's folder, as qemu-img resolves backing files.
 */
export function resolveNamedFile(imagePath: string, name: string): string {
  return isAbsolute(name) ? name : join(dirname(imagePath), name);
}

/**
 * Refuses names in an image (its backing file, its data file, a VMDK extent:
 * `what`) that would lead outside the image's folder or to something other
 * than a regular file (a device), unless allowed: an image must not make
 * Platter read or write a file the user did not choose.
 */
async function checkFileAllowed(imagePath: string, what: string, name: string, resolved: string, allow: boolean): Promise<void> {
  const ctx = { path: imagePath, op: 'open' };
  if (name.startsWith('json:')) {
    throw new BlockError('Unsupported', `the ${what} is a json: specification (${name.slice(0, 60)}), which Platter does not follow`, ctx);
  }
  if (allow) return;
  // A device (or a symlink to one) is never an image's part: reading /dev/sda through an extent is an attack.
  const st = await stat(resolved).catch(() => undefined);
  if (st && !st.isFile()) {
    throw new BlockError(
      'InvalidArgument',
      `the ${what} ${name} is not a regular file; pass --allow-external-files if you trust this image`,
      ctx,
    );
  }
  const folder = await realpath(dirname(imagePath));
  const target = await realpath(resolved).catch(() => resolve(resolved));
  const rel = relative(folder, target);
  if (rel.startsWith('..') || isAbsolute(rel)) {
    throw new BlockError(
      'InvalidArgument',
      `the ${what} ${name} is outside the image's folder; pass --allow-external-files if you trust this image`,
      ctx,
    );
  }
}

/**
 * A file an image names (its backing file, its data file, an extent) that
 * is not there: said of the image, whose user may never have heard of the
 * file. Other errors pass as they are (they name the file already).
 */
function missingPart(err: unknown, imageName: string, what: string, file: string, fileDisplayName: string): unknown {
  if (!(err instanceof BlockError) || err.kind !== 'NotFound' || err.context.path !== fileDisplayName) return err;
  return new BlockError('NotFound', `cannot open its ${what} ${file}: ${err.message}`, { path: imageName, op: 'open' }, err);
}

/** Opens an image and its backing chain. */
export async function openImage(filename: string, opts: OpenOptions = {}): Promise<Image> {
  return openChain(filename, opts, []);
}

async function openChain(filename: string, opts: OpenOptions, above: string[]): Promise<Image> {
  const readOnly = opts.readOnly ?? true;
  const explicit = opts.format ? findDriver(opts.format) : undefined;
  const name = opts.displayName ?? filename;
  const { cache, blocking } = opts;
  const proto = await openProtocol(filename, { readOnly, displayName: name, cache, blocking });
  try {
    const driver = explicit ?? probeDriver(await readProbeInput(proto));
    if (opts.snapshot !== undefined && !readOnly) {
      throw new BlockError('InvalidArgument', 'a snapshot can only be opened read-only', { path: name });
    }
    const openFile = async (file: string, o: { readOnly: boolean; what: string }) => {
      const path = resolveNamedFile(filename, file);
      await checkFileAllowed(name, o.what, file, path, opts.allowExternalFiles ?? false);
      const displayName = resolveNamedFile(name, file);
      return openProtocol(path, { readOnly: o.readOnly, displayName, cache, blocking }).catch((err: unknown) => {
        throw missingPart(err, name, o.what, file, displayName);
      });
    };
    const layer = await driver.open(proto, { readOnly, snapshot: opts.snapshot, repair: opts.repair, forCheck: opts.forCheck, openFile });
    if (opts.snapshot !== undefined && !hasSnapshots(layer)) {
      await layer.close();
      throw new BlockError('Unsupported', `${driver.name} images have no internal snapshots`, { path: name });
    }
    let backing: Image | undefined;
    try {
      const ref = layer.backingRef;
      if (ref && !opts.noBacking && hasBacking(layer)) {
        const path = resolveNamedFile(filename, ref.filename);
        await checkFileAllowed(name, 'backing file', ref.filename, path, opts.allowExternalFiles ?? false);
        const real = await realpath(path).catch(() => path);
        const chain = [...above, await realpath(filename).catch(() => filename)];
        if (chain.includes(real)) throw new BlockError('Corrupt', `the backing chain loops back to ${ref.filename}`, { path: name });
        if (above.length >= MAX_BACKING_DEPTH) {
          throw new BlockError('Unsupported', `the backing chain is deeper than ${MAX_BACKING_DEPTH} images`, { path: name });
        }
        const displayName = resolveNamedFile(name, ref.filename);
        backing = await openChain(
          path,
          { format: ref.format, readOnly: true, allowExternalFiles: opts.allowExternalFiles, displayName, blocking },
          chain,
        ).catch((err: unknown) => {
          throw missingPart(err, name, 'backing file', ref.filename, displayName);
        });
        layer.setBacking(backing);
      }
    } catch (err) {
      await layer.close();
      throw err;
    }
    const image = new Image(name, driver, layer, proto, backing);
    image.openedAs = { filename, options: { ...opts, format: driver.name } };
    return image;
  } catch (err) {
    await proto.close();
    throw toBlockError(err, { path: name, op: 'open' });
  }
}

/**
 * Writes a new, empty image of `driver`'s format into an open protocol.
 * Options must already be resolved against the driver's declarations.
 */
export async function formatImage(
  proto: Protocol,
  driver: FormatDriver,
  size: number,
  options: OptionValues,
  createFile?: (name: string) => Promise<Protocol>,
  openFile?: (name: string) => Promise<Protocol>,
): Promise<void> {
  if (!driver.create) {
    throw new BlockError('Unsupported', `${driver.name} images cannot be created (read-only format)`, {
      path: proto.name,
      op: 'create',
    });
  }
  await driver.create(proto, { size, options, createFile, openFile });
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
  /** noBacking: the backing file the image names is not opened (create -u: it may not exist yet). */
  { cache, noBacking }: { cache?: CacheMode; noBacking?: boolean } = {},
): Promise<NewImage> {
  const pending = new PendingFile(path);
  // Files the image names (a data file) are made next to it, under their
  // own names (the image refers to them so); removed if anything fails.
  const extra: Protocol[] = [];
  const removeExtra = () => Promise.all(extra.map((p) => rm(p.name, { force: true }).catch(() => undefined)));
  const createFile = async (name: string) => {
    const proto = await openProtocol(resolveNamedFile(pending.tempPath, name), {
      readOnly: false,
      create: true,
      displayName: resolveNamedFile(path, name),
      nocow: options.nocow === true,
      cache,
    });
    extra.push(proto);
    return proto;
  };
  try {
    const proto = await openProtocol(pending.tempPath, {
      readOnly: false,
      create: true,
      displayName: path,
      nocow: options.nocow === true,
      cache,
    });
    try {
      // The user named the files the new image refers to: they are opened as given.
      const openFile = (name: string) => openProtocol(resolveNamedFile(path, name), { readOnly: true, cache });
      await formatImage(proto, driver, size, options, createFile, openFile);
    } finally {
      await proto.close();
      // The driver may have closed them with the image it made.
      for (const p of extra) await p.close().catch(() => undefined);
    }
    // The user named every file, so none is refused as external.
    const image = await openImage(pending.tempPath, {
      format: driver.name,
      readOnly: false,
      displayName: path,
      cache,
      allowExternalFiles: true,
      noBacking,
    });
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
        await removeExtra();
      },
    };
  } catch (err) {
    await pending.discard();
    await removeExtra();
    throw toBlockError(err, { path, op: 'create' });
  }
}
