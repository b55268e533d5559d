/**
 * Reading a range in order with several chunks in flight: what hash and
 * compare need (they consume in order, but the disk should never wait).
 */
import type { Image } from '../image/image.js';
import { giveBuffer, takeBuffer } from '../io/buffers.js';

export interface Chunk {
  offset: number;
  length: number;
}

/**
 * Yields `load`'s results for consecutive chunks of [start, end) in order,
 * keeping `depth` loads running ahead. Each load gets its own buffer of
 * `chunkSize` bytes; a buffer is reused once the consumer asks for the next
 * result, so the consumer must be done with it by then.
 */
export async function* readAhead<T>(
  start: number,
  end: number,
  chunkSize: number,
  depth: number,
  load: (chunk: Chunk, buf: Uint8Array) => Promise<T>,
  bufferSize = chunkSize,
): AsyncGenerator<T> {
  const pending: { promise: Promise<T>; buf: Uint8Array }[] = [];
  const spare: Uint8Array[] = [];
  let next = start;
  let stoppedOnHead = false;
  const fill = () => {
    while (pending.length < depth && next < end) {
      const length = Math.min(chunkSize, end - next);
      const buf = spare.pop() ?? takeBuffer(bufferSize);
      const promise = load({ offset: next, length }, buf);
      // Rejections are seen when consumed; don't report them as unhandled.
      promise.catch(() => undefined);
      pending.push({ promise, buf });
      next += length;
    }
  };
  try {
    fill();
    while (pending.length > 0) {
      const head = pending[0];
      const value = await head.promise;
      stoppedOnHead = true;
      yield value;
      stoppedOnHead = false;
      pending.shift();
      spare.push(head.buf);
      fill();
    }
  } finally {
    // Stopped early (a mismatch, an error): let loads in flight settle before
    // the caller closes the images under them.
    await Promise.allSettled(pending.map((p) => p.promise));
    // The consumer may still look at the value it stopped on; keep that buffer out of the pool.
    spare.forEach(giveBuffer);
    pending.slice(stoppedOnHead ? 1 : 0).forEach((p) => giveBuffer(p.buf));
  }
}

/** Fills `buf` with the guest bytes at `offset`, reading only what holds data. */
export async function readGuest(image: Image, buf: Uint8Array, offset: number): Promise<void> {
  for (let at = 0; at < buf.length; ) {
    const st = await image.blockStatus(offset + at, buf.length - at);
    const piece = buf.subarray(at, at + st.length);
    if (!st.zero) await image.read(piece, offset + at);
    else piece.fill(0);
    at += st.length;
  }
}
