/**
 * compare: are two images' guest contents the same? Ranges both images
 * know to be zero are never read. Answers like qemu-img compare.
 */
import { openImage } from '../image/open.js';
import type { Image } from '../image/image.js';
import { throwIfAborted } from '../image/errors.js';
import { ProgressMeter, type JobContext } from './job.js';
import { isZero } from './zero-runs.js';

export interface CompareOptions {
  a: string;
  b: string;
  formatA?: string;
  formatB?: string;
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
  const a = await openImage(opts.a, { format: opts.formatA });
  try {
    const b = await openImage(opts.b, { format: opts.formatB });
    try {
      return await compareImages(a, b, opts.strict ?? false, ctx);
    } finally {
      await b.close();
    }
  } finally {
    await a.close();
  }
}

async function compareImages(a: Image, b: Image, strict: boolean, ctx: JobContext): Promise<CompareResult> {
  const sizeMismatch = a.size !== b.size;
  if (strict && sizeMismatch) return { identical: false, reason: 'size' };
  const common = Math.min(a.size, b.size);
  const larger = a.size > b.size ? a : b;
  const meter = new ProgressMeter(Math.max(a.size, b.size), ctx);
  const bufA = new Uint8Array(CHUNK);
  const bufB = new Uint8Array(CHUNK);

  for (let at = 0; at < common; ) {
    throwIfAborted(ctx.signal);
    const len = Math.min(CHUNK - (at % CHUNK), common - at);
    const [sa, sb] = await Promise.all([a.blockStatus(at, len), b.blockStatus(at, len)]);
    const step = Math.min(sa.length, sb.length);
    if (strict && sa.present !== sb.present) return { identical: false, reason: 'allocation', offset: at };
    if (sa.data || sb.data) {
      const da = bufA.subarray(0, step);
      const db = bufB.subarray(0, step);
      await Promise.all([a.read(da, at), b.read(db, at)]);
      const diff = firstDifference(da, db);
      // Found before the size difference is looked at, so not reported with it.
      if (diff >= 0) return { identical: false, reason: 'content', offset: floorSector(at + diff), sizeMismatch: false };
    }
    at += step;
    meter.add(step);
  }

  // Without -s, a longer image still matches if its extra part reads as zeros.
  for (let at = common; at < larger.size; ) {
    throwIfAborted(ctx.signal);
    const st = await larger.blockStatus(at, Math.min(CHUNK, larger.size - at));
    if (st.data) {
      const d = bufA.subarray(0, st.length);
      await larger.read(d, at);
      const nz = firstNonZero(d);
      if (nz >= 0) return { identical: false, reason: 'content', offset: floorSector(at + nz), sizeMismatch };
    }
    at += st.length;
    meter.add(st.length);
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
