/**
 * The metadata log's entries: a "loge" header, descriptors, data sectors,
 * all in 4 KiB sectors of a circular buffer, a CRC-32C over the whole entry.
 * Metadata changes are written here first, then to their place, so a crash
 * in between is repaired by replaying the log. This module reads and writes
 * one entry; log-search.ts finds the entries to replay, log-replay.ts
 * replays them. Nothing here holds more than one log sector: a log may be
 * almost 4 GiB.
 */
import { BlockError } from '../../image/errors.js';
import { setVhdxChecksum } from './crc32c.js';
import { guidEquals } from './guid.js';
import * as L from './limits.js';
import type { LogReader } from './log-reader.js';

const S = L.LOG_SECTOR_SIZE;
/** Descriptor slots in a sector; the entry header takes the first two of the first sector. */
const SLOTS = S / L.LOG_DESC_SIZE;
const HEADER_SLOTS = L.LOG_HEADER_SIZE / L.LOG_DESC_SIZE;

/**
 * One write of the log. A data write's sector is its data sector in the log
 * (at file offset `from`) with the first 8 and last 4 bytes taken from its
 * descriptor (`edges`: the 4 trailing bytes, then the 8 leading ones, as the
 * descriptor stores them); the sector is read when it is replayed.
 */
export type LogOp =
  | { kind: 'data'; fileOffset: number; from: number; edges: Uint8Array }
  | { kind: 'zero'; fileOffset: number; length: number };
export type DataOp = Extract<LogOp, { kind: 'data' }>;
export type ZeroOp = Extract<LogOp, { kind: 'zero' }>;

/** An entry header that passed the checks made before the entry is read (QEMU's vhdx_log_hdr_is_valid). */
export interface EntryHeader {
  length: number;
  sequence: bigint;
  /** Descriptors, and the sectors they take with the header. */
  count: number;
  descSectors: number;
  flushedFileOffset: number;
  lastFileOffset: number;
}

/** Sectors the header and `count` descriptors take: 126 fit beside the header, 128 in each further sector. */
export const descriptorSectors = (count: number) => Math.ceil((count + HEADER_SLOTS) / SLOTS);

export const corrupt = (message: string): never => {
  throw new BlockError('Corrupt', message, { op: 'open' });
};
/** Whether the 4 bytes at `at` are the signature `sig` (compared in place: every log sector is looked at). */
function isSignature(b: Uint8Array, at: number, sig: string): boolean {
  for (let i = 0; i < 4; i++) if (b[at + i] !== sig.charCodeAt(i)) return false;
  return true;
}
const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** The entry header in `sector`, if it is one of this log (else undefined: any sector may hold anything). */
export function parseEntryHeader(sector: Uint8Array, logLength: number, logGuid: Uint8Array): EntryHeader | undefined {
  if (!isSignature(sector, 0, L.LOG_ENTRY_SIGNATURE)) return undefined;
  const v = view(sector);
  const length = v.getUint32(8, true);
  const sequence = v.getBigUint64(16, true);
  const count = v.getUint32(24, true);
  if (length === 0 || length % S || length > logLength || sequence === 0n) return undefined;
  if (!guidEquals(sector.subarray(32, 48), logGuid)) return undefined;
  const descSectors = descriptorSectors(count);
  if (descSectors * S > length) return undefined;
  const flushedFileOffset = Number(v.getBigUint64(48, true));
  return { length, sequence, count, descSectors, flushedFileOffset, lastFileOffset: Number(v.getBigUint64(56, true)) };
}

/**
 * The operations of the entry at `at`, one descriptor sector's worth (at
 * most 128) at a time, each descriptor checked as QEMU checks it
 * (vhdx_log_desc_is_valid): once its checksum has matched, an entry with a
 * wrong descriptor is a damaged log, refused.
 */
export async function* entryOps(log: LogReader, at: number, h: EntryHeader): AsyncGenerator<LogOp[]> {
  const dataSectors = h.length / S - h.descSectors;
  let data = 0;
  for (let s = 0; s < h.descSectors; s++) {
    const sector = await log.sector(at + s * S);
    const v = view(sector);
    const ops: LogOp[] = [];
    for (let slot = s ? 0 : HEADER_SLOTS; slot < SLOTS; slot++) {
      const i = s * SLOTS + slot - HEADER_SLOTS;
      if (i >= h.count) break;
      const d = slot * L.LOG_DESC_SIZE;
      const fileOffset = Number(v.getBigUint64(d + 16, true));
      const what = `VHDX log entry ${h.sequence}: descriptor ${i}`;
      if (v.getBigUint64(d + 24, true) !== h.sequence) corrupt(`${what} has another sequence number`);
      if (fileOffset % S) corrupt(`${what} file offset ${fileOffset} is not 4 KiB aligned`);
      if (isSignature(sector, d, L.LOG_ZERO_SIGNATURE)) {
        const length = Number(v.getBigUint64(d + 8, true));
        if (length % S) corrupt(`${what} (zero) length ${length} is not 4 KiB aligned`);
        ops.push({ kind: 'zero', fileOffset, length });
      } else if (isSignature(sector, d, L.LOG_DESC_SIGNATURE)) {
        if (data === dataSectors) corrupt(`VHDX log entry ${h.sequence} has fewer data sectors than descriptors`);
        const from = log.fileOffset(at + (h.descSectors + data++) * S);
        ops.push({ kind: 'data', fileOffset, from, edges: sector.slice(d + 4, d + 16) });
      } else {
        corrupt(`${what} has an unknown signature`);
      }
    }
    yield ops;
  }
}

/** Whether `sector` is a data sector of entry `sequence`: signature, and sequence number split around the data. */
export function isDataSector(sector: Uint8Array, sequence: bigint): boolean {
  const v = view(sector);
  const seq = (BigInt(v.getUint32(4, true)) << 32n) | BigInt(v.getUint32(S - 4, true));
  return isSignature(sector, 0, L.LOG_DATA_SIGNATURE) && seq === sequence;
}

/** Turns a data sector, in place, into the sector it carries: the first 8 and last 4 bytes come from `edges`. */
export function restoreSector(sector: Uint8Array, edges: Uint8Array): void {
  sector.set(edges.subarray(4, 12), 0);
  sector.set(edges.subarray(0, 4), S - 4);
}

/** Data sectors that fit in one entry of a log of `logLength` bytes (one sector is left open, as QEMU does). */
export function maxSectorsPerEntry(logLength: number): number {
  const sectors = logLength / S - 1;
  let n = sectors - 1;
  while (n > 0 && descriptorSectors(n) + n > sectors) n--;
  return n;
}

/** What a log entry does to one place of the file: write a whole 4 KiB sector, or zero a range. */
export type EntryWrite = { fileOffset: number; data: Uint8Array } | { fileOffset: number; zeroLength: number };

/** One log entry doing `writes` in order (file offsets and zero lengths 4 KiB aligned). */
export function buildEntry(opts: {
  sequence: bigint;
  logGuid: Uint8Array;
  tail: number;
  fileSize: number;
  writes: readonly EntryWrite[];
}): Uint8Array {
  const descSectors = descriptorSectors(opts.writes.length);
  const dataSectors = opts.writes.filter((w) => 'data' in w).length;
  const length = (descSectors + dataSectors) * S;
  const buf = new Uint8Array(length);
  const v = new DataView(buf.buffer);
  const enc = new TextEncoder();
  buf.set(enc.encode(L.LOG_ENTRY_SIGNATURE), 0);
  v.setUint32(8, length, true);
  v.setUint32(12, opts.tail, true);
  v.setBigUint64(16, opts.sequence, true);
  v.setUint32(24, opts.writes.length, true);
  buf.set(opts.logGuid, 32);
  v.setBigUint64(48, BigInt(opts.fileSize), true);
  v.setBigUint64(56, BigInt(opts.fileSize), true);
  let ds = descSectors * S;
  opts.writes.forEach((w, i) => {
    const d = L.LOG_HEADER_SIZE + i * L.LOG_DESC_SIZE;
    v.setBigUint64(d + 16, BigInt(w.fileOffset), true);
    v.setBigUint64(d + 24, opts.sequence, true);
    if ('zeroLength' in w) {
      buf.set(enc.encode(L.LOG_ZERO_SIGNATURE), d);
      v.setBigUint64(d + 8, BigInt(w.zeroLength), true);
      return;
    }
    buf.set(enc.encode(L.LOG_DESC_SIGNATURE), d);
    buf.set(w.data.subarray(S - 4, S), d + 4);
    buf.set(w.data.subarray(0, 8), d + 8);
    buf.set(enc.encode(L.LOG_DATA_SIGNATURE), ds);
    v.setUint32(ds + 4, Number(opts.sequence >> 32n), true);
    buf.set(w.data.subarray(8, 8 + L.LOG_DATA_BYTES), ds + 8);
    v.setUint32(ds + S - 4, Number(opts.sequence & 0xffffffffn), true);
    ds += S;
  });
  setVhdxChecksum(buf, 4);
  return buf;
}
