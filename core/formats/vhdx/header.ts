/**
 * The file identifier and the two headers. Each header is a 4 KiB structure
 * with a CRC-32C; the valid one with the higher sequence number is current
 * (as in the spec and QEMU). Updates go to the other one with the next
 * sequence number, so a torn write always leaves one valid header.
 */
import { BlockError } from '../../image/errors.js';
import { hasValidChecksum, setVhdxChecksum } from './crc32c.js';
import * as L from './limits.js';

export interface VhdxHeader {
  sequence: bigint;
  fileWriteGuid: Uint8Array;
  dataWriteGuid: Uint8Array;
  logGuid: Uint8Array;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
  /** The 4 KiB as read, so a rewrite keeps reserved bytes. */
  raw: Uint8Array;
}

const OFF = {
  signature: 0,
  checksum: 4,
  sequence: 8,
  fileWriteGuid: 16,
  dataWriteGuid: 32,
  logGuid: 48,
  logVersion: 64,
  version: 66,
  logLength: 68,
  logOffset: 72,
} as const;

const ascii = (b: Uint8Array, at: number, n: number) => String.fromCharCode(...b.subarray(at, at + n));
const fail = (kind: 'InvalidFormat' | 'Corrupt' | 'Unsupported', message: string): never => {
  throw new BlockError(kind, message, { op: 'open' });
};

export function checkFileIdentifier(head: Uint8Array): void {
  if (head.length < 8 || ascii(head, 0, 8) !== L.FILE_SIGNATURE) {
    fail('InvalidFormat', 'Image not in VHDX format (no "vhdxfile" signature)');
  }
}

/** One header sector parsed, or why it is not valid. */
function parseOne(buf: Uint8Array): VhdxHeader | string {
  if (ascii(buf, OFF.signature, 4) !== L.HEADER_SIGNATURE) return 'bad signature';
  if (!hasValidChecksum(buf, OFF.checksum)) return 'bad checksum';
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const version = v.getUint16(OFF.version, true);
  if (version !== L.HEADER_VERSION) return `version ${version}`;
  return {
    sequence: v.getBigUint64(OFF.sequence, true),
    fileWriteGuid: buf.slice(OFF.fileWriteGuid, OFF.fileWriteGuid + 16),
    dataWriteGuid: buf.slice(OFF.dataWriteGuid, OFF.dataWriteGuid + 16),
    logGuid: buf.slice(OFF.logGuid, OFF.logGuid + 16),
    logVersion: v.getUint16(OFF.logVersion, true),
    version,
    logLength: v.getUint32(OFF.logLength, true),
    logOffset: Number(v.getBigUint64(OFF.logOffset, true)),
    raw: buf.slice(0, L.HEADER_SIZE),
  };
}

export interface CurrentHeader {
  header: VhdxHeader;
  /** 0 for the header at 64 KiB, 1 for the one at 128 KiB. */
  index: 0 | 1;
}

/** Picks the current header from the two 4 KiB sectors, as QEMU does. */
export function pickHeader(h1: Uint8Array, h2: Uint8Array): CurrentHeader {
  const a = parseOne(h1);
  const b = parseOne(h2);
  if (typeof a === 'string' && typeof b === 'string') {
    return fail('Corrupt', `No valid VHDX header found (header 1: ${a}; header 2: ${b})`);
  }
  if (typeof b === 'string') return { header: a as VhdxHeader, index: 0 };
  if (typeof a === 'string') return { header: b, index: 1 };
  if (a.sequence > b.sequence) return { header: a, index: 0 };
  if (b.sequence > a.sequence) return { header: b, index: 1 };
  // Disk2VHD writes two identical headers; anything else with equal numbers is ambiguous.
  if (a.raw.every((x, i) => x === b.raw[i])) return { header: a, index: 0 };
  return fail('Corrupt', 'No valid VHDX header found (both headers have sequence number ' + a.sequence + ')');
}

/** Checks the current header's log fields before the log is looked at (QEMU's rules). */
export function validateLogFields(h: VhdxHeader, fileSize: number): void {
  if (h.logVersion !== L.LOG_VERSION) fail('Unsupported', `unsupported VHDX log version ${h.logVersion}`);
  if (h.logOffset < L.HEADER_SECTION_SIZE || h.logOffset % L.OBJECT_ALIGNMENT) {
    const at = `0x${h.logOffset.toString(16)}`;
    fail('Corrupt', `the VHDX log offset ${at} is not a multiple of 1 MiB past the header section`);
  }
  if (h.logLength % L.MIN_LOG_SIZE) fail('Corrupt', `the VHDX log length ${h.logLength} is not a multiple of 1 MiB`);
  if (h.logOffset + h.logLength > fileSize) {
    const log = `0x${h.logOffset.toString(16)}, ${h.logLength} bytes`;
    fail('Corrupt', `the VHDX log (${log}) is beyond the end of the file (${fileSize} bytes)`);
  }
}

/** The 4 KiB sector of `h`, checksummed. */
export function serializeHeader(h: VhdxHeader): Uint8Array {
  const out = h.raw.slice();
  const v = new DataView(out.buffer);
  out.set(new TextEncoder().encode(L.HEADER_SIGNATURE), OFF.signature);
  v.setBigUint64(OFF.sequence, h.sequence, true);
  out.set(h.fileWriteGuid, OFF.fileWriteGuid);
  out.set(h.dataWriteGuid, OFF.dataWriteGuid);
  out.set(h.logGuid, OFF.logGuid);
  v.setUint16(OFF.logVersion, h.logVersion, true);
  v.setUint16(OFF.version, h.version, true);
  v.setUint32(OFF.logLength, h.logLength, true);
  v.setBigUint64(OFF.logOffset, BigInt(h.logOffset), true);
  setVhdxChecksum(out, OFF.checksum);
  return out;
}

export const headerOffset = (index: 0 | 1) => (index === 0 ? L.HEADER1_OFFSET : L.HEADER2_OFFSET);
