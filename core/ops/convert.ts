/**
 * convert: copy one or more images (concatenated) into a new image of any
 * writable format, or into an existing one with `noCreate`.
 */
import type { SnapshotKey } from '../image/driver.js';
import { BlockError } from '../image/errors.js';
import type { Image } from '../image/image.js';
import { createImage, openImage, type NewImage } from '../image/open.js';
import { createOptionsOf, findDriver } from '../image/registry.js';
import { resolveOptions } from '../options/schema.js';
import { copySpans, DEFAULT_COPY_OPTIONS, type CopyOptions, type CopySpan } from './copy.js';
import { copyInWorkers } from './copy-workers.js';
import { requireBackingFormat } from './create.js';
import type { CacheMode } from '../io/protocol.js';
import type { JobContext } from './job.js';

/** Same bounds as qemu-img: at most 16 requests in flight. */
export const MAX_PARALLEL = 16;

/** The largest -S, as qemu-img's (32768 sectors). */
const MAX_SPARSE_SIZE = 16 << 20;

export interface ConvertOptions extends Partial<CopyOptions> {
  /** Open backing files outside the images' folders. */
  allowExternalFiles?: boolean;
  /** Copy this internal snapshot of the (single) source (`-l`). */
  snapshot?: SnapshotKey;
  sources: string[];
  /** Format of every source; probed when omitted. */
  sourceFormat?: string;
  target: string;
  targetFormat?: string;
  /** Create options for the target (`-o`), as text. */
  options?: Record<string, string>;
  /** Write into an existing target instead of creating one (`-n`). */
  noCreate?: boolean;
  /** 'unsafe' skips the final fsync, as qemu-img's default does (`-t`). */
  cache?: CacheMode;
}

/** qemu-img's -t modes that apply here: flush at the end, or never. */

export interface ConvertResult {
  size: number;
}

export async function convert(opts: ConvertOptions, ctx: JobContext = {}): Promise<ConvertResult> {
  if (opts.sources.length === 0) throw new BlockError('InvalidArgument', 'no source image given');
  const copy = copyOptionsFrom(opts);
  const sources: Image[] = [];
  try {
    if (opts.snapshot !== undefined && opts.sources.length > 1) {
      throw new BlockError('InvalidArgument', 'a snapshot can only be copied from a single source image');
    }
    for (const name of opts.sources) {
      sources.push(
        await openImage(name, { format: opts.sourceFormat, allowExternalFiles: opts.allowExternalFiles, snapshot: opts.snapshot }),
      );
    }
    const spans: CopySpan[] = [];
    let size = 0;
    for (const source of sources) {
      spans.push({ source, sourceOffset: 0, length: source.size, targetOffset: size });
      size += source.size;
    }
    await copyIntoTarget(spans, size, opts, copy, ctx);
    return { size };
  } finally {
    await Promise.all(sources.map((s) => s.close()));
  }
}

/**
 * Writes `spans` into the target named by `opts`: a new image of `size`
 * (appearing only when complete), or the existing one with `noCreate`.
 * Shared by convert and dd.
 */
export async function copyIntoTarget(
  spans: CopySpan[],
  size: number,
  opts: Pick<ConvertOptions, 'target' | 'targetFormat' | 'options' | 'noCreate' | 'cache'>,
  copy: CopyOptions,
  ctx: JobContext,
): Promise<void> {
  const copyAll = async (target: Image, c: CopyOptions) => {
    if (!(await copyInWorkers(spans, target, c, ctx))) await copySpans(spans, target, c, ctx);
  };
  const cache = opts.cache ?? 'writeback';
  const durable = cache === 'writeback';
  if (opts.noCreate) {
    const target = await openImage(opts.target, { format: opts.targetFormat, readOnly: false, cache });
    try {
      if (target.size < size) {
        throw new BlockError('InvalidArgument', `target is too small: ${target.size} bytes, ${size} needed`, {
          path: opts.target,
        });
      }
      await copyAll(target, copy);
      if (durable) await target.flush();
    } finally {
      await target.close();
    }
    return;
  }
  const driver = findDriver(opts.targetFormat ?? 'raw');
  const values = resolveOptions(createOptionsOf(driver), { ...opts.options }, driver.name);
  delete values.size; // the size is the sources' size
  // Compressed clusters go only where nothing is allocated yet: preallocation would leave no room for any.
  if (copy.compress && values.preallocation !== undefined && values.preallocation !== 'off') {
    throw new BlockError('InvalidArgument', 'compression (-c) and preallocation cannot be used together', { path: opts.target });
  }
  requireBackingFormat(values.backing_file, values.backing_fmt, { path: opts.target });
  let created: NewImage | undefined;
  try {
    created = await createImage(opts.target, driver, size, values, { cache });
    // A new image reads as zeros, unless it has a backing file: then only
    // the sources' own layers are copied over what that file holds.
    const backed = created.image.backing !== undefined;
    await copyAll(created.image, { ...copy, targetIsZero: !backed, targetHasBacking: backed });
    await created.commit({ durable });
  } catch (err) {
    await created?.abort();
    throw err;
  }
}

/** The copy tunables in `opts`, defaults filled in and bounds checked. */
export function copyOptionsFrom(opts: Partial<CopyOptions>): CopyOptions {
  const d = DEFAULT_COPY_OPTIONS;
  const copy: CopyOptions = {
    sparseSize: opts.sparseSize ?? d.sparseSize,
    parallel: opts.parallel ?? d.parallel,
    outOfOrder: opts.outOfOrder ?? d.outOfOrder,
    targetIsZero: opts.targetIsZero ?? d.targetIsZero,
    targetHasBacking: opts.targetHasBacking ?? d.targetHasBacking,
    chunkSize: opts.chunkSize ?? d.chunkSize,
    rateLimit: opts.rateLimit ?? d.rateLimit,
    compress: opts.compress ?? d.compress,
  };
  if (!Number.isSafeInteger(copy.rateLimit) || copy.rateLimit < 0) {
    throw new BlockError('InvalidArgument', 'the rate limit (-r) must be a positive number of bytes per second');
  }
  if (copy.parallel !== undefined && (!Number.isInteger(copy.parallel) || copy.parallel < 1 || copy.parallel > MAX_PARALLEL)) {
    throw new BlockError('InvalidArgument', `parallel requests must be between 1 and ${MAX_PARALLEL}`);
  }
  if (!Number.isSafeInteger(copy.sparseSize) || copy.sparseSize < 0 || copy.sparseSize % 512 !== 0 || copy.sparseSize > MAX_SPARSE_SIZE) {
    throw new BlockError('InvalidArgument', 'the sparse size (-S) must be a multiple of 512 up to 16 MiB (0 allocates everything)');
  }
  return copy;
}
