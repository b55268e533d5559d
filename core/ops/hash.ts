/**
 * hash: a digest of the guest-visible bytes, so two images of any formats can
 * be compared by a short string. Zero ranges are hashed without being read.
 */
import { createHash } from 'node:crypto';
import { throwIfAborted } from '../image/errors.js';
import { openImage } from '../image/open.js';
import type { Image } from '../image/image.js';
import { ProgressMeter, type JobContext } from './job.js';
import { readAhead, readGuest } from './read-ahead.js';

export const HASH_ALGORITHMS = ['sha256', 'sha512', 'sha1', 'md5'] as const;
export type HashAlgorithm = (typeof HASH_ALGORITHMS)[number];

const CHUNK = 4 << 20;
/** Reads in flight ahead of the hash, which must consume in order. */
const READ_AHEAD = 3;

export async function hash(
  opts: { filename: string; format?: string; algorithm?: HashAlgorithm; allowExternalFiles?: boolean },
  ctx: JobContext = {},
): Promise<string> {
  const image = await openImage(opts.filename, { format: opts.format, allowExternalFiles: opts.allowExternalFiles });
  try {
    return await hashImage(image, opts.algorithm ?? 'sha256', ctx);
  } finally {
    await image.close();
  }
}

export async function hashImage(image: Image, algorithm: HashAlgorithm, ctx: JobContext = {}): Promise<string> {
  const h = createHash(algorithm);
  const meter = new ProgressMeter(image.size, ctx);
  const chunks = readAhead(0, image.size, CHUNK, READ_AHEAD, async (c, buf) => {
    const piece = buf.subarray(0, c.length);
    await readGuest(image, piece, c.offset);
    return piece;
  });
  for await (const piece of chunks) {
    throwIfAborted(ctx.signal);
    h.update(piece);
    meter.add(piece.length);
  }
  meter.finish();
  return h.digest('hex');
}
