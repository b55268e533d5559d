/**
 * The log as the file holds it, read a sector at a time through two cached
 * windows: the search scans the log with one while it checksums a candidate
 * entry with the other, so neither makes the other read again, and a log of
 * any size costs two windows of memory.
 */
import type { Protocol } from '../../io/protocol.js';
import { LOG_SECTOR_SIZE as S, MiB } from './limits.js';

/** A log is a whole number of MiB, so 1 MiB windows tile it and no sector straddles two. */
const WINDOW = MiB;

export class LogReader {
  private readonly windows: { start: number; buf?: Uint8Array }[] = [{ start: -1 }, { start: -1 }];
  /** The window read last; the other is the one to reuse. */
  private recent = 0;

  constructor(
    private readonly file: Pick<Protocol, 'read'>,
    /** Where the log starts in the file, and its length (a multiple of 1 MiB). */
    readonly offset: number,
    readonly length: number,
    /** The log GUID of the current header: entries of any other are not entries. */
    readonly guid: Uint8Array,
  ) {}

  /** Where the log sector at `at` (4 KiB aligned, past the end wraps around) is in the file. */
  fileOffset(at: number): number {
    return this.offset + (at % this.length);
  }

  /** The 4 KiB log sector at `at` (as for fileOffset); valid until the next call. */
  async sector(at: number): Promise<Uint8Array> {
    const pos = at % this.length;
    const size = Math.min(WINDOW, this.length);
    const start = pos - (pos % size);
    let i = this.windows.findIndex((w) => w.start === start);
    if (i < 0) {
      i = 1 - this.recent;
      const w = this.windows[i];
      w.buf ??= new Uint8Array(size);
      w.start = -1; // not valid until read in full
      await this.file.read(w.buf, this.offset + start);
      w.start = start;
    }
    this.recent = i;
    const buf = this.windows[i].buf as Uint8Array;
    return buf.subarray(pos - start, pos - start + S);
  }
}
