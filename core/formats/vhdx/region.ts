/**
 * The region table: where the BAT and the metadata region are. Two copies
 * (192 KiB and 256 KiB) with a CRC-32C each; QEMU reads only the first, Platter
 * falls back to the second when the first is damaged. Regions must not
 * overlap each other, the header section or the log, and must lie in the file.
 */
import { BlockError } from '../../image/errors.js';
import { hasValidChecksum, setVhdxChecksum } from './crc32c.js';
import { BAT_GUID, guidEquals, METADATA_GUID } from './guid.js';
import * as L from './limits.js';

export interface Region {
  offset: number;
  length: number;
}

export interface RegionTable {
  bat: Region;
  metadata: Region;
}

/** Byte ranges of the file that belong to a structure, for overlap checks. */
export class FileRegions {
  private readonly ranges: { start: number; end: number; what: string }[] = [];

  /** The first registered range that [start, start + length) overlaps, if any. */
  overlap(start: number, length: number): string | undefined {
    const end = start + length;
    return this.ranges.find((r) => start < r.end && r.start < end)?.what;
  }

  add(start: number, length: number, what: string): void {
    this.ranges.push({ start, end: start + length, what });
  }
}

const hex = (n: number) => '0x' + n.toString(16);

/** Parses one 64 KiB region table; returns why it is not valid instead of throwing for damage. */
function parseTable(buf: Uint8Array, fileSize: number, regions: FileRegions): RegionTable | BlockError {
  const bad = (message: string, kind: 'Corrupt' | 'Unsupported' = 'Corrupt') =>
    new BlockError(kind, message, { op: 'open' });
  if (String.fromCharCode(...buf.subarray(0, 4)) !== L.REGION_SIGNATURE) {
    return bad('the VHDX region table has no "regi" signature');
  }
  if (!hasValidChecksum(buf, 4)) return bad('the VHDX region table checksum is wrong');
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const count = v.getUint32(8, true);
  if (count > L.MAX_REGION_ENTRIES) {
    return bad(`the VHDX region table has ${count} entries, more than ${L.MAX_REGION_ENTRIES}`);
  }
  let bat: Region | undefined;
  let metadata: Region | undefined;
  const seen = new FileRegions();
  for (let i = 0; i < count; i++) {
    const at = 16 + i * 32;
    const id = buf.subarray(at, at + 16);
    const offset = Number(v.getBigUint64(at + 16, true));
    const length = v.getUint32(at + 24, true);
    const required = (v.getUint32(at + 28, true) & L.REGION_REQUIRED) !== 0;
    const where = `region ${i} (${hex(offset)}, ${length} bytes)`;
    if (offset % L.OBJECT_ALIGNMENT || length % L.OBJECT_ALIGNMENT) return bad(`VHDX ${where} is not aligned to 1 MiB`);
    if (offset < L.HEADER_SECTION_SIZE) return bad(`VHDX ${where} overlaps the header section`);
    if (offset + length > fileSize) return bad(`VHDX ${where} is beyond the end of the file (${fileSize} bytes)`);
    const other = regions.overlap(offset, length) ?? seen.overlap(offset, length);
    if (other) return bad(`VHDX ${where} overlaps the ${other}`);
    if (guidEquals(id, BAT_GUID)) {
      if (bat) return bad('the VHDX region table lists the BAT twice');
      bat = { offset, length };
      seen.add(offset, length, 'BAT');
    } else if (guidEquals(id, METADATA_GUID)) {
      if (metadata) return bad('the VHDX region table lists the metadata region twice');
      metadata = { offset, length };
      seen.add(offset, length, 'metadata region');
    } else if (required) {
      return bad(`VHDX ${where} is required but unknown`, 'Unsupported');
    } else {
      seen.add(offset, length, `region ${i}`);
    }
  }
  if (!bat || !metadata) return bad(`the VHDX region table has no ${bat ? 'metadata region' : 'BAT'}`);
  return { bat, metadata };
}

/** The region table in use, and, when that is the second copy, what is wrong with the first and the bytes to mend it with. */
export interface RegionTables {
  table: RegionTable;
  damagedFirst?: { why: string; good: Uint8Array };
}

/**
 * The region table from the header section, the first copy if valid, else
 * the second; the BAT and metadata region are added to `regions`.
 */
export function parseRegionTables(section: Uint8Array, fileSize: number, regions: FileRegions): RegionTables {
  const bytes = (at: number) => section.subarray(at, at + L.HEADER_BLOCK_SIZE);
  const first = parseTable(bytes(L.REGION_TABLE1_OFFSET), fileSize, regions);
  let out: RegionTables;
  if (first instanceof BlockError) {
    const second = parseTable(bytes(L.REGION_TABLE2_OFFSET), fileSize, regions);
    if (second instanceof BlockError) throw first;
    out = { table: second, damagedFirst: { why: first.message, good: bytes(L.REGION_TABLE2_OFFSET).slice() } };
  } else out = { table: first };
  regions.add(out.table.bat.offset, out.table.bat.length, 'BAT');
  regions.add(out.table.metadata.offset, out.table.metadata.length, 'metadata region');
  return out;
}

/** A region table listing the BAT and the metadata region (both required), checksummed. */
export function serializeRegionTable(t: RegionTable): Uint8Array {
  const buf = new Uint8Array(L.HEADER_BLOCK_SIZE);
  const v = new DataView(buf.buffer);
  buf.set(new TextEncoder().encode(L.REGION_SIGNATURE), 0);
  v.setUint32(8, 2, true);
  [
    [BAT_GUID, t.bat],
    [METADATA_GUID, t.metadata],
  ].forEach(([id, r], i) => {
    const at = 16 + i * 32;
    buf.set(id as Uint8Array, at);
    v.setBigUint64(at + 16, BigInt((r as Region).offset), true);
    v.setUint32(at + 24, (r as Region).length, true);
    v.setUint32(at + 28, L.REGION_REQUIRED, true);
  });
  setVhdxChecksum(buf, 4);
  return buf;
}
