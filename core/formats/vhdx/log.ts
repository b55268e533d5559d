/**
 * The metadata log: a circular buffer of 4 KiB sectors holding entries
 * ("loge" header, descriptors, data sectors; CRC-32C over the whole entry).
 * Metadata changes are written here first, then to their place, so a crash
 * in between is repaired by replaying the log. Finding the active sequence
 * follows the spec and QEMU's vhdx_log_search: every sector may start an
 * entry; entries that follow each other with consecutive sequence numbers
 * form a sequence; the one whose last entry has the highest number wins.
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { hasValidChecksum, setVhdxChecksum } from './crc32c.js';
import { guidEquals } from './guid.js';
import * as L from './limits.js';

const S = L.LOG_SECTOR_SIZE;

export type LogOp =
  | { kind: 'data'; fileOffset: number; data: Uint8Array }
  | { kind: 'zero'; fileOffset: number; length: number };

export interface LogEntry {
  /** Where the entry starts in the log. */
  at: number;
  length: number;
  sequence: bigint;
  flushedFileOffset: number;
  lastFileOffset: number;
  ops: LogOp[];
}

/** Sectors the header and `count` descriptors take: 126 fit beside the header, 128 in each further sector. */
export const descriptorSectors = (count: number) => Math.ceil((count + 2) / 128);

const corrupt = (message: string): never => {
  throw new BlockError('Corrupt', message, { op: 'open' });
};
const ascii = (b: Uint8Array, at: number) => String.fromCharCode(...b.subarray(at, at + 4));

/** `n` bytes of the circular log from `at`. */
function circular(log: Uint8Array, at: number, n: number): Uint8Array {
  const start = at % log.length;
  if (start + n <= log.length) return log.subarray(start, start + n);
  const out = new Uint8Array(n);
  out.set(log.subarray(start));
  out.set(log.subarray(0, n - (log.length - start)), log.length - start);
  return out;
}

/**
 * The entry at `at` if its header and checksum are valid (else undefined).
 * An entry that passes both but whose descriptors or data sectors are wrong
 * is a damaged log, refused as QEMU refuses it.
 */
function entryAt(log: Uint8Array, at: number, logGuid: Uint8Array, budget: { bytes: number }): LogEntry | undefined {
  const head = circular(log, at, L.LOG_HEADER_SIZE);
  if (ascii(head, 0) !== L.LOG_ENTRY_SIGNATURE) return undefined;
  const hv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const length = hv.getUint32(8, true);
  const sequence = hv.getBigUint64(16, true);
  const count = hv.getUint32(24, true);
  if (length === 0 || length % S || length > log.length || sequence === 0n) return undefined;
  if (!guidEquals(head.subarray(32, 48), logGuid)) return undefined;
  const descSectors = descriptorSectors(count);
  if (descSectors * S > length) return undefined;
  // Every sector may start an entry as long as the log: a hostile log would make the search quadratic.
  budget.bytes -= length;
  if (budget.bytes < 0) corrupt('the VHDX log is not valid (too many overlapping entries to search)');
  const entry = circular(log, at, length);
  if (!hasValidChecksum(entry, 4)) return undefined;
  const v = new DataView(entry.buffer, entry.byteOffset, entry.byteLength);
  const ops: LogOp[] = [];
  let dataAt = descSectors * S;
  for (let i = 0; i < count; i++) {
    const d = L.LOG_HEADER_SIZE + i * L.LOG_DESC_SIZE;
    const sig = ascii(entry, d);
    const fileOffset = Number(v.getBigUint64(d + 16, true));
    const what = `VHDX log entry ${sequence}: descriptor ${i}`;
    if (v.getBigUint64(d + 24, true) !== sequence) corrupt(`${what} has another sequence number`);
    if (fileOffset % S) corrupt(`${what} file offset ${fileOffset} is not 4 KiB aligned`);
    if (sig === L.LOG_ZERO_SIGNATURE) {
      const zeroLength = Number(v.getBigUint64(d + 8, true));
      if (zeroLength % S) corrupt(`${what} (zero) length ${zeroLength} is not 4 KiB aligned`);
      ops.push({ kind: 'zero', fileOffset, length: zeroLength });
    } else if (sig === L.LOG_DESC_SIGNATURE) {
      if (dataAt + S > length) corrupt(`VHDX log entry ${sequence} has fewer data sectors than descriptors`);
      const ds = entry.subarray(dataAt, dataAt + S);
      const dv = new DataView(ds.buffer, ds.byteOffset, S);
      const seq = (BigInt(dv.getUint32(4, true)) << 32n) | BigInt(dv.getUint32(S - 4, true));
      if (ascii(ds, 0) !== L.LOG_DATA_SIGNATURE || seq !== sequence) {
        corrupt(`VHDX log entry ${sequence}: data sector ${i} is not valid`);
      }
      const data = new Uint8Array(S);
      data.set(entry.subarray(d + 8, d + 16), 0);
      data.set(ds.subarray(8, 8 + L.LOG_DATA_BYTES), 8);
      data.set(entry.subarray(d + 4, d + 8), S - 4);
      ops.push({ kind: 'data', fileOffset, data });
      dataAt += S;
    } else {
      corrupt(`${what} has an unknown signature`);
    }
  }
  return {
    at,
    length,
    sequence,
    flushedFileOffset: Number(hv.getBigUint64(48, true)),
    lastFileOffset: Number(hv.getBigUint64(56, true)),
    ops,
  };
}

/** The active sequence of the log (the log region's bytes), or [] when there is none. */
export function findActiveSequence(log: Uint8Array, logGuid: Uint8Array): LogEntry[] {
  const budget = { bytes: L.LOG_SEARCH_BUDGET * log.length };
  let best: LogEntry[] = [];
  for (let at = 0; at < log.length; ) {
    const first = entryAt(log, at, logGuid, budget);
    if (!first) {
      at += S;
      continue;
    }
    const seq = [first];
    let next = at + first.length;
    let used = first.length;
    for (;;) {
      const last = seq[seq.length - 1];
      if (used >= log.length) break;
      const e = entryAt(log, next, logGuid, budget);
      if (!e || e.sequence !== last.sequence + 1n || used + e.length > log.length) break;
      seq.push(e);
      next += e.length;
      used += e.length;
    }
    // The highest last number wins; for the same last entry, the longer sequence (it starts nearer the tail).
    const head = seq[seq.length - 1].sequence;
    const bestHead = best.length ? best[best.length - 1].sequence : -1n;
    if (head > bestHead || (head === bestHead && seq.length > best.length)) best = seq;
    // A sequence that wraps past the end was the last to find.
    if (next >= log.length) break;
    at = next;
  }
  return best;
}

/** Reads the log region and finds its active sequence (a header with a null log GUID has none). */
export async function readActiveSequence(
  proto: Protocol,
  offset: number,
  length: number,
  logGuid: Uint8Array,
): Promise<LogEntry[]> {
  if (length === 0) return [];
  if (length > L.MAX_LOG_OVERLAY) {
    throw new BlockError('Unsupported', `the VHDX log (${length} bytes) is too large to replay`, { op: 'open' });
  }
  const log = new Uint8Array(length);
  await proto.read(log, offset);
  return findActiveSequence(log, logGuid);
}

/** Checks that replaying `entries` into a file of `fileSize` bytes stays within sensible bounds. */
export function validateReplay(entries: readonly LogEntry[], fileSize: number): void {
  for (const e of entries) {
    if (e.flushedFileOffset > fileSize) {
      const sizes = `written when the file was ${e.flushedFileOffset} bytes, but it is ${fileSize}`;
      corrupt(`the VHDX log was ${sizes}: the image has probably been truncated`);
    }
    const limit = Math.max(fileSize, e.lastFileOffset);
    if (e.lastFileOffset > L.MAX_DISK_SIZE * 2) {
      corrupt(`VHDX log entry ${e.sequence} has a last file offset of ${e.lastFileOffset}`);
    }
    for (const op of e.ops) {
      const end = op.fileOffset + (op.kind === 'data' ? S : op.length);
      if (end > limit) {
        corrupt(`VHDX log entry ${e.sequence} writes at ${op.fileOffset}, beyond the file (${limit} bytes)`);
      }
    }
  }
}

/** Applies `entries` to `target`, in order, and grows it to the entries' last file offset. */
export async function replay(target: Protocol, entries: readonly LogEntry[]): Promise<void> {
  for (const e of entries) {
    for (const op of e.ops) {
      if (op.kind === 'data') await target.write(op.data, op.fileOffset);
      else await target.writeZeroes(op.fileOffset, op.length, false);
    }
    if ((await target.size()) < e.lastFileOffset) await target.truncate(e.lastFileOffset);
  }
}

/** Data sectors that fit in one entry of a log of `logLength` bytes (one sector is left open, as QEMU does). */
export function maxSectorsPerEntry(logLength: number): number {
  const sectors = logLength / S - 1;
  let n = sectors - 1;
  while (n > 0 && descriptorSectors(n) + n > sectors) n--;
  return n;
}

/** One log entry writing whole 4 KiB sectors `writes` (file offsets 4 KiB aligned). */
export function buildEntry(opts: {
  sequence: bigint;
  logGuid: Uint8Array;
  tail: number;
  fileSize: number;
  writes: readonly { fileOffset: number; data: Uint8Array }[];
}): Uint8Array {
  const n = opts.writes.length;
  const descSectors = descriptorSectors(n);
  const length = (descSectors + n) * S;
  const buf = new Uint8Array(length);
  const v = new DataView(buf.buffer);
  const enc = new TextEncoder();
  buf.set(enc.encode(L.LOG_ENTRY_SIGNATURE), 0);
  v.setUint32(8, length, true);
  v.setUint32(12, opts.tail, true);
  v.setBigUint64(16, opts.sequence, true);
  v.setUint32(24, n, true);
  buf.set(opts.logGuid, 32);
  v.setBigUint64(48, BigInt(opts.fileSize), true);
  v.setBigUint64(56, BigInt(opts.fileSize), true);
  opts.writes.forEach((w, i) => {
    const d = L.LOG_HEADER_SIZE + i * L.LOG_DESC_SIZE;
    buf.set(enc.encode(L.LOG_DESC_SIGNATURE), d);
    buf.set(w.data.subarray(S - 4, S), d + 4);
    buf.set(w.data.subarray(0, 8), d + 8);
    v.setBigUint64(d + 16, BigInt(w.fileOffset), true);
    v.setBigUint64(d + 24, opts.sequence, true);
    const ds = (descSectors + i) * S;
    buf.set(enc.encode(L.LOG_DATA_SIGNATURE), ds);
    v.setUint32(ds + 4, Number(opts.sequence >> 32n), true);
    buf.set(w.data.subarray(8, 8 + L.LOG_DATA_BYTES), ds + 8);
    v.setUint32(ds + S - 4, Number(opts.sequence & 0xffffffffn), true);
  });
  setVhdxChecksum(buf, 4);
  return buf;
}
