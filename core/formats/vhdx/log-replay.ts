/**
 * Replaying the active sequence, entry by entry from the file, as QEMU's
 * vhdx_log_flush does: into the file itself (read-write open), or into a
 * read-only overlay (overlay.ts) that only notes where each sector is.
 * Either way memory stays one descriptor sector's operations and their data
 * sectors, whatever the size of the log.
 */
import type { Protocol } from '../../io/protocol.js';
import * as L from './limits.js';
import { corrupt, entryOps, parseEntryHeader, restoreSector } from './log.js';
import type { DataOp, EntryHeader, LogOp, ZeroOp } from './log.js';
import type { LogReader } from './log-reader.js';
import type { ActiveSequence } from './log-search.js';

const S = L.LOG_SECTOR_SIZE;

/** Where a replay goes. */
export interface ReplayTarget {
  /** Applies operations of one entry, in order (at most one descriptor sector's: 128). */
  apply(ops: readonly LogOp[]): Promise<void>;
  /** Grows the file to `size` bytes when it is shorter (an entry's last file offset). */
  grow(size: number): Promise<void>;
}

/** The sequence's entries in order, read again from the log (the search found them all valid). */
async function* entriesOf(log: LogReader, seq: ActiveSequence): AsyncGenerator<{ at: number; h: EntryHeader }> {
  let at = seq.at;
  for (let i = 0; i < seq.entries; i++) {
    const h = parseEntryHeader(await log.sector(at), log.length, log.guid);
    if (!h) return corrupt('the VHDX log changed while it was being read');
    yield { at, h };
    at += h.length;
  }
}

/** Checks, before anything is written, that replaying `seq` into a file of `fileSize` bytes stays in bounds. */
export async function validateReplay(log: LogReader, seq: ActiveSequence, fileSize: number): Promise<void> {
  const logEnd = log.offset + log.length;
  for await (const { at, h } of entriesOf(log, seq)) {
    if (h.flushedFileOffset > fileSize) {
      const sizes = `written when the file was ${h.flushedFileOffset} bytes, but it is ${fileSize}`;
      corrupt(`the VHDX log was ${sizes}: the image has probably been truncated`);
    }
    if (h.lastFileOffset > L.MAX_DISK_SIZE * 2) {
      corrupt(`VHDX log entry ${h.sequence} has a last file offset of ${h.lastFileOffset}`);
    }
    const limit = Math.max(fileSize, h.lastFileOffset);
    for await (const ops of entryOps(log, at, h)) {
      for (const op of ops) {
        const end = op.fileOffset + (op.kind === 'data' ? S : op.length);
        const where = `VHDX log entry ${h.sequence} writes at ${op.fileOffset}`;
        if (end > limit) corrupt(`${where}, beyond the file (${limit} bytes)`);
        // The data sectors are read from the log as the replay goes: a log that wrote over itself would
        // replay differently read-only (the file untouched) and read-write. No real log writes there.
        if (op.fileOffset < logEnd && end > log.offset) corrupt(`${where}, into the log itself`);
      }
    }
  }
}

/** Replays `seq` (checked by validateReplay) into `target`. */
export async function replay(target: ReplayTarget, log: LogReader, seq: ActiveSequence): Promise<void> {
  for await (const { at, h } of entriesOf(log, seq)) {
    for await (const ops of entryOps(log, at, h)) await target.apply(ops);
    await target.grow(h.lastFileOffset);
  }
}

/** The data operations from `first` (ops[i]) on that follow each other both in the log and in the file. */
function dataRun(ops: readonly LogOp[], i: number, first: DataOp): DataOp[] {
  const run = [first];
  for (let o = ops[i + 1]; o?.kind === 'data'; o = ops[i + run.length]) {
    if (o.fileOffset !== first.fileOffset + run.length * S || o.from !== first.from + run.length * S) break;
    run.push(o);
  }
  return run;
}

/** How many zero operations from `first` (ops[i]) on zero one range together, and its end. */
function zeroRun(ops: readonly LogOp[], i: number, first: ZeroOp): { count: number; end: number } {
  let end = first.fileOffset + first.length;
  let count = 1;
  for (let o = ops[i + 1]; o?.kind === 'zero'; o = ops[i + ++count]) {
    if (o.fileOffset < first.fileOffset || o.fileOffset > end) break;
    end = Math.max(end, o.fileOffset + o.length);
  }
  return { count, end };
}

/**
 * The file as a replay target. Data sectors that follow each other both in
 * the log and in the file (as a writer puts a run of BAT pages) are read and
 * written in one piece.
 */
export function intoFile(file: Protocol): ReplayTarget {
  return {
    async apply(ops) {
      for (let i = 0; i < ops.length; ) {
        const op = ops[i];
        if (op.kind === 'zero') {
          // Zero descriptors over the same place, one after the other, are one write, not one each.
          const run = zeroRun(ops, i, op);
          await file.writeZeroes(op.fileOffset, run.end - op.fileOffset, false);
          i += run.count;
          continue;
        }
        const run = dataRun(ops, i, op);
        const buf = new Uint8Array(run.length * S);
        await file.read(buf, op.from);
        run.forEach((r, k) => restoreSector(buf.subarray(k * S, (k + 1) * S), r.edges));
        await file.write(buf, op.fileOffset);
        i += run.length;
      }
    },
    async grow(size) {
      if ((await file.size()) < size) await file.truncate(size);
    },
  };
}
