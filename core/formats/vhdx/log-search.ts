/**
 * Finding the log's active sequence, as the spec and QEMU's vhdx_log_search
 * do: every sector may start an entry; entries that follow each other with
 * consecutive sequence numbers form a sequence; the one whose last entry has
 * the highest number wins. The log is read entry by entry from the file
 * (header first, its length checked before the rest is read), so memory
 * does not grow with the log.
 */
import { crc32c, vhdxChecksum } from './crc32c.js';
import * as L from './limits.js';
import { corrupt, entryOps, isDataSector, parseEntryHeader, type EntryHeader } from './log.js';
import type { LogReader } from './log-reader.js';

const S = L.LOG_SECTOR_SIZE;

/** The entries to replay: `entries` of them from `at` in the log, the last numbered `last`. */
export interface ActiveSequence {
  at: number;
  entries: number;
  last: bigint;
}

/**
 * Every sector may start an entry as long as the log: a hostile log would
 * make the search quadratic. QEMU's search has no bound; this one reads at
 * most LOG_SEARCH_BUDGET times the log's length in entries.
 */
function spend(budget: { bytes: number }, bytes: number): void {
  budget.bytes -= bytes;
  if (budget.bytes < 0) corrupt('the VHDX log is not valid (too many overlapping entries to search)');
}

/** Whether the checksum in the entry's header is the CRC-32C of the whole entry (read a sector at a time). */
async function checksumMatches(log: LogReader, at: number, h: EntryHeader): Promise<boolean> {
  const first = await log.sector(at);
  const stored = new DataView(first.buffer, first.byteOffset, S).getUint32(4, true);
  let crc = vhdxChecksum(first, 4);
  for (let i = S; i < h.length; i += S) crc = crc32c(await log.sector(at + i), crc);
  return crc === stored;
}

/** Refuses an entry whose checksum matches but whose descriptors or data sectors are wrong, as QEMU does. */
async function checkEntry(log: LogReader, at: number, h: EntryHeader): Promise<void> {
  let data = 0;
  for await (const ops of entryOps(log, at, h)) data += ops.filter((op) => op.kind === 'data').length;
  for (let k = 0; k < data; k++) {
    if (!isDataSector(await log.sector(at + (h.descSectors + k) * S), h.sequence)) {
      corrupt(`VHDX log entry ${h.sequence}: data sector ${k} is not valid`);
    }
  }
}

/** The entry at `at` if its header and checksum are valid (else undefined). */
async function entryAt(log: LogReader, at: number, budget: { bytes: number }): Promise<EntryHeader | undefined> {
  const h = parseEntryHeader(await log.sector(at), log.length, log.guid);
  if (!h) return undefined;
  spend(budget, h.length);
  if (!(await checksumMatches(log, at, h))) return undefined;
  spend(budget, h.length);
  await checkEntry(log, at, h);
  return h;
}

/** The log's active sequence, or undefined when it has none. */
export async function findActiveSequence(log: LogReader): Promise<ActiveSequence | undefined> {
  const budget = { bytes: L.LOG_SEARCH_BUDGET * log.length };
  let best: ActiveSequence | undefined;
  for (let at = 0; at < log.length; ) {
    const first = await entryAt(log, at, budget);
    if (!first) {
      at += S;
      continue;
    }
    const seq = { at, entries: 1, last: first.sequence };
    let next = at + first.length;
    for (;;) {
      // A sequence never holds more than the log: past that it would be reading its own start again.
      if (next - at >= log.length) break;
      const e = await entryAt(log, next, budget);
      if (!e || e.sequence !== seq.last + 1n || next - at + e.length > log.length) break;
      seq.entries++;
      seq.last = e.sequence;
      next += e.length;
    }
    // The highest last number wins; for the same last entry, the longer sequence (it starts nearer the tail).
    if (!best || seq.last > best.last || (seq.last === best.last && seq.entries > best.entries)) best = seq;
    // A sequence that wraps past the end was the last to find.
    if (next >= log.length) break;
    at = next;
  }
  return best;
}
