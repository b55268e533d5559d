/**
 * commit: write what an image (and the layers under it, down to a base)
 * stores into that base, as qemu-img commit does. Afterwards the top image
 * is emptied, so it reads as the base again, unless told to leave it (-d);
 * with an explicit base it is always left, as the layers between would
 * otherwise be left inconsistent.
 */
import { realpath } from 'node:fs/promises';
import { isEmptiable, isResizable } from '../image/driver.js';
import { BlockError, throwIfAborted } from '../image/errors.js';
import type { Image } from '../image/image.js';
import { openImage } from '../image/open.js';
import { copyOptionsFrom } from './convert.js';
import type { CacheMode } from '../io/protocol.js';
import { copySpans, type CopySpan } from './copy.js';
import type { JobContext } from './job.js';

export interface CommitOptions {
  filename: string;
  format?: string;
  /** The image to commit into: a file of the backing chain (default: the immediate backing file). */
  base?: string;
  /** Leave the top image as it is (qemu-img's -d); implied by `base`. */
  keepTop?: boolean;
  /** 'unsafe' skips the final fsyncs. */
  cache?: CacheMode;
  /** Bytes per second at most; 0 for no limit. */
  rateLimit?: number;
  allowExternalFiles?: boolean;
}

export interface CommitResult {
  /** Whether the top image was emptied. */
  emptied: boolean;
}

export async function commit(opts: CommitOptions, ctx: JobContext = {}): Promise<CommitResult> {
  const empty = !opts.keepTop && opts.base === undefined;
  const copy = copyOptionsFrom({ rateLimit: opts.rateLimit });
  const durable = opts.cache !== 'unsafe';
  const where = { path: opts.filename, op: 'commit' };
  const top = await openImage(opts.filename, { format: opts.format, readOnly: !empty, allowExternalFiles: opts.allowExternalFiles });
  try {
    if (!top.backing) throw new BlockError('InvalidArgument', 'the image has no backing file', where);
    if (empty && !isEmptiable(top.layer)) throw new BlockError('Unsupported', `${top.format} images cannot be emptied; use -d`, where);
    const { layer: baseLayer, depth: baseDepth } = await findBase(top, opts.base);
    const base = await openImage(baseLayer.filename, {
      format: baseLayer.format,
      readOnly: false,
      allowExternalFiles: opts.allowExternalFiles,
    });
    try {
      if (base.size < top.size) {
        // The base must hold everything the top shows (qemu grows it too).
        if (!isResizable(base.layer)) throw new BlockError('Unsupported', `${base.format} images cannot grow`, { path: base.filename });
        await base.layer.resize(top.size, { prealloc: 'off', shrink: false });
      }
      const spans = await rangesAbove(top, baseDepth, ctx);
      await copySpans(spans, base, copy, ctx);
      if (durable) await base.flush();
    } finally {
      await base.close();
    }
    // Emptied only once the base holds everything: a crash before leaves the same content.
    if (empty && isEmptiable(top.layer)) {
      await top.layer.makeEmpty();
      if (durable) await top.flush();
    }
    return { emptied: empty };
  } finally {
    await top.close();
  }
}

/**
 * The layer of `top`'s chain named `name` (by the name a header gives it, or
 * as a path to the same file), or the immediate backing file.
 */
async function findBase(top: Image, name: string | undefined): Promise<{ layer: Image; depth: number }> {
  if (name === undefined) return { layer: top.backing!, depth: 1 };
  const real = (p: string) => realpath(p).catch(() => p);
  const wanted = await real(name);
  let depth = 1;
  for (let above = top, layer = top.backing; layer; above = layer, layer = layer.backing, depth++) {
    if (above.layer.backingRef?.filename === name || (await real(layer.filename)) === wanted) return { layer, depth };
  }
  throw new BlockError('InvalidArgument', `did not find '${name}' in its backing chain`, {
    path: top.filename,
    op: 'commit',
  });
}

/** The ranges of `top` that layers above depth `baseDepth` decide (stored, zeroed, or past a shorter backing file). */
async function rangesAbove(top: Image, baseDepth: number, ctx: JobContext): Promise<CopySpan[]> {
  const spans: CopySpan[] = [];
  for (let at = 0; at < top.size; ) {
    throwIfAborted(ctx.signal);
    const st = await top.blockStatus(at, top.size - at);
    if (st.depth < baseDepth) {
      const last = spans[spans.length - 1];
      if (last && last.sourceOffset + last.length === at) last.length += st.length;
      else spans.push({ source: top, sourceOffset: at, length: st.length, targetOffset: at });
    }
    at += st.length;
  }
  return spans;
}
