/**
 * compare: are two images' guest contents the same? Ranges both images
 * know to be zero are never read. Answers like qemu-img compare.
 */
import { openImage } from '../image/open.js';
import type { Image } from '../image/image.js';
import { throwIfAborted } from '../image/errors.js';
import { ProgressMeter, type JobContext } from './job.js';
import { readAhead, readGuest } from './read-ahead.js';
import { isZero } from '../io/zero.js';

export interface CompareOptions {
  a: string;
  b: string;
  formatA?: string;
  formatB?: string;
  allowExternalFiles?: boolean;
  /** Sizes and allocation must match too (qemu-img compare -s). */
  strict?: boolean;
}

export type CompareResult =
  | { identical: true; sizeMismatch: boolean }
  | { identical: false; reason: 'content'; offset: number; sizeMismatch: boolean }
  | { identical: false; reason: 'size' }
  | { identical: false; reason: 'allocation'; offset: number };

/** Mismatches are reported at sector granularity, as qemu-img does. */
const SECTOR = 512;
const CHUNK = 2 << 20;

export async function compare(opts: CompareOptions, ctx: JobContext = {}): Promise<CompareResult> {
  const a = await openImage(opts.a, { format: opts.formatA, allowExternalFiles: opts.allowExternalFiles });
  try {
    const b = await openImage(opts.b, { format: opts.formatB, allowExternalFiles: opts.allowExternalFiles });
    try {
      return await compareImages(a, b, opts.strict ?? false, ctx);
    } finally {
      await b.close();
    }
  } finally {
    await a.close();
  }
}

/** What one chunk of a comparison found. */
type Verdict =
  | { kind: 'same'; length: number }
  | { kind: 'content'; offset: number }
  | { kind: 'allocation'; offset: number };

/** Chunks compared at once, ahead of the one being looked at. */
const READ_AHEAD = 4;

async function compareImages(a: Image, b: Image, strict: boolean, ctx: JobContext): Promise<CompareResult> {
  const sizeMismatch = a.size !== b.size;
  if (strict && sizeMismatch) return { identical: false, reason: 'size' };
  const common = Math.min(a.size, b.size);
  const larger = a.size > b.size ? a : b;
  const meter = new ProgressMeter(Math.max(a.size, b.size), ctx);

  // Each chunk answers with its first difference (or -1); the first chunk in
  // order that has one is the answer, as in a sequential scan.
  const common$ = readAhead(0, common, CHUNK, READ_AHEAD, async (c, buf): Promise<Verdict> => {
    const other = buf.subarray(CHUNK);
    for (let at = c.offset; at < c.offset + c.length; ) {
      const len = c.offset + c.length - at;
      const [sa, sb] = await Promise.all([a.blockStatus(at, len), b.blockStatus(at, len)]);
      const step = Math.min(sa.length, sb.length);
      if (strict && sa.present !== sb.present) return { kind: 'allocation', offset: at };
      if (!sa.zero || !sb.zero) {
        const da = buf.subarray(0, step);
        const db = other.subarray(0, step);
        await Promise.all([a.read(da, at), b.read(db, at)]);
        const diff = firstDifference(da, db);
        if (diff >= 0) return { kind: 'content', offset: at + diff };
      }
      at += step;
    }
    return { kind: 'same', length: c.length };
  }, 2 * CHUNK);
  for await (const r of common$) {
    throwIfAborted(ctx.signal);
    if (r.kind === 'allocation') return { identical: false, reason: 'allocation', offset: r.offset };
    // Found before the size difference is looked at, so not reported with it.
    if (r.kind === 'content') return { identical: false, reason: 'content', offset: floorSector(r.offset), sizeMismatch: false };
    meter.add(r.length);
  }

  // Without -s, a longer image still matches if its extra part reads as zeros.
  const extra$ = readAhead(common, larger.size, CHUNK, READ_AHEAD, async (c, buf): Promise<Verdict> => {
    const piece = buf.subarray(0, c.length);
    await readGuest(larger, piece, c.offset);
    const nz = firstNonZero(piece);
    return nz >= 0 ? { kind: 'content', offset: c.offset + nz } : { kind: 'same', length: c.length };
  });
  for await (const r of extra$) {
    throwIfAborted(ctx.signal);
    if (r.kind !== 'same') return { identical: false, reason: 'content', offset: floorSector(r.offset), sizeMismatch: true };
    meter.add(r.length);
  }
  meter.finish();
  return { identical: true, sizeMismatch };
}

const floorSector = (n: number) => n - (n % SECTOR);

/** Index of the first differing byte, or -1; memcmp first, then a scan to locate it. */
function firstDifference(x: Uint8Array, y: Uint8Array): number {
  if (Buffer.from(x.buffer, x.byteOffset, x.length).equals(Buffer.from(y.buffer, y.byteOffset, y.length))) return -1;
  for (let i = 0; i < x.length; i += SECTOR) {
    const end = Math.min(i + SECTOR, x.length);
    if (Buffer.compare(x.subarray(i, end), y.subarray(i, end)) !== 0) {
      for (let j = i; j < end; j++) if (x[j] !== y[j]) return j;
    }
  }
  return -1;
}

function firstNonZero(x: Uint8Array): number {
  if (isZero(x)) return -1;
  for (let i = 0; i < x.length; i += SECTOR) {
    const piece = x.subarray(i, Math.min(i + SECTOR, x.length));
    if (!isZero(piece)) return i + piece.findIndex((v) => v !== 0);
  }
  return -1;
}
