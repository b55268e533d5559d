/** map: which ranges of an image hold data, zeros or nothing, and where. */
import { openImage } from '../image/open.js';
import type { BlockStatus } from '../image/image.js';
import { throwIfAborted } from '../image/errors.js';
import { ProgressMeter, type JobContext } from './job.js';

/** One entry of `qemu-img map --output=json`, key for key. */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  /** Stored compressed; not printed by the CLI (qemu-img has no such key), shown by the app. */
  compressed: boolean;
  /** Not printed; the human output names the file. */
  filename: string;
}

export interface MapOptions {
  filename: string;
  format?: string;
  allowExternalFiles?: boolean;
  startOffset?: number;
  maxLength?: number;
}

/** Ranges asked about at once; qemu-img asks in pieces of at most 1 GiB too. */
const MAP_STEP = 1 << 30;

function mergeable(a: MapEntry, b: BlockStatus): boolean {
  return (
    a.depth === b.depth &&
    a.present === b.present &&
    a.zero === b.zero &&
    a.data === b.data &&
    a.compressed === b.compressed &&
    a.filename === b.filename &&
    (a.offset === undefined) === (b.hostOffset === undefined) &&
    (a.offset === undefined || a.offset + a.length === b.hostOffset)
  );
}

export async function map(opts: MapOptions, ctx: JobContext = {}): Promise<MapEntry[]> {
  const image = await openImage(opts.filename, { format: opts.format, allowExternalFiles: opts.allowExternalFiles });
  try {
    const start = opts.startOffset ?? 0;
    const end = Math.min(image.size, start + (opts.maxLength ?? image.size));
    const entries: MapEntry[] = [];
    const meter = new ProgressMeter(Math.max(0, end - start), ctx);
    for (let at = start; at < end; ) {
      throwIfAborted(ctx.signal);
      const st = await image.blockStatus(at, Math.min(end - at, MAP_STEP));
      const last = entries[entries.length - 1];
      if (last && mergeable(last, st)) {
        last.length += st.length;
      } else {
        const e: MapEntry = {
          start: at,
          length: st.length,
          depth: st.depth,
          present: st.present,
          zero: st.zero,
          data: st.data,
          compressed: st.compressed,
          filename: st.filename,
        };
        if (st.hostOffset !== undefined) e.offset = st.hostOffset;
        entries.push(e);
      }
      at += st.length;
      meter.add(st.length);
    }
    meter.finish();
    // Nothing in range: qemu-img still prints one empty, absent entry there.
    if (entries.length === 0) {
      const absent = { depth: 0, present: false, zero: false, data: false, compressed: false };
      entries.push({ start, length: 0, ...absent, filename: image.filename });
    }
    return entries;
  } finally {
    await image.close();
  }
}
