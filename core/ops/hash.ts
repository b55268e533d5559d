/**
 * hash: a digest of the guest-visible bytes, so two images of any formats can
 * be compared by a short string. Zero ranges are hashed without being read.
 */
import { createHash } from 'node:crypto';
import { throwIfAborted } from '../image/errors.js';
import { openImage } from '../image/open.js';
import type { Image } from '../image/image.js';
import { ProgressMeter, type JobContext } from './job.js';

export const HASH_ALGORITHMS = ['sha256', 'sha512', 'sha1', 'md5'] as const;
export type HashAlgorithm = (typeof HASH_ALGORITHMS)[number];

const CHUNK = 4 << 20;
/** Reads in flight ahead of the hash, which must consume in order. */
const READ_AHEAD = 3;

export async function hash(
  opts: { filename: string; format?: string; algorithm?: HashAlgorithm },
  ctx: JobContext = {},
): Promise<string> {
  const image = await openImage(opts.filename, { format: opts.format });
  try {
    return await hashImage(image, opts.algorithm ?? 'sha256', ctx);
  } finally {
    await image.close();
  }
}

/** Fills `buf` with the guest bytes at `offset`, reading only what holds data. */
async function readChunk(image: Image, buf: Uint8Array, offset: number): Promise<void> {
  for (let at = 0; at < buf.length; ) {
    const st = await image.blockStatus(offset + at, buf.length - at);
    const piece = buf.subarray(at, at + st.length);
    if (st.data) await image.read(piece, offset + at);
    else piece.fill(0);
    at += st.length;
  }
}

export async function hashImage(image: Image, algorithm: HashAlgorithm, ctx: JobContext = {}): Promise<string> {
  const h = createHash(algorithm);
  const meter = new ProgressMeter(image.size, ctx);
  const pending: Promise<Uint8Array>[] = [];
  const spare: Uint8Array[] = [];
  let next = 0;
  const schedule = () => {
    while (pending.length < READ_AHEAD && next < image.size) {
      const offset = next;
      const len = Math.min(CHUNK, image.size - offset);
      next += len;
      const buf = (spare.pop() ?? new Uint8Array(CHUNK)).subarray(0, len);
      pending.push(readChunk(image, buf, offset).then(() => buf));
    }
  };
  try {
    schedule();
    while (pending.length > 0) {
      throwIfAborted(ctx.signal);
      const buf = await pending.shift()!;
      h.update(buf);
      meter.add(buf.length);
      spare.push(new Uint8Array(buf.buffer));
      schedule();
    }
  } finally {
    // Let reads still in flight settle before the image is closed under them.
    await Promise.allSettled(pending);
  }
  meter.finish();
  return h.digest('hex');
}
