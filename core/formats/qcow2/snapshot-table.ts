/** The qcow2 snapshot table: parsed with every length checked, and written back. */
import { BlockError } from '../../image/errors.js';
import * as L from './limits.js';

export interface SnapshotEntry {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: number;
  /** The guest size when taken (version 3 extra data), if recorded. */
  diskSize?: number;
  /** Extra data past the fields Platter knows, kept as read. */
  extraRest: Uint8Array;
  /** Bytes of extra data the entry has in the file, when read from it (version 3 needs at least 16). */
  extraBytes?: number;
}

const corrupt = (msg: string) => new BlockError('Corrupt', msg);
const dec = new TextDecoder();
const enc = new TextEncoder();
const pad8 = (n: number) => Math.ceil(n / 8) * 8;

/**
 * Reads the table at `offset`, reading more as entries need it: at most
 * 64 MiB, and never past the end of the file (`fileSize`), so a small file
 * cannot make Platter allocate far more than it holds.
 */
export async function readSnapshotTable(
  read: (buf: Uint8Array, offset: number) => Promise<void>,
  offset: number,
  count: number,
  clusterSize: number,
  fileSize = Infinity,
): Promise<{ entries: SnapshotEntry[]; size: number }> {
  const limit = Math.max(0, Math.min(L.MAX_SNAPSHOT_TABLE_BYTES, fileSize - offset));
  for (let size = Math.min(64 * 1024, limit); ; size = Math.min(size * 4, limit)) {
    const raw = new Uint8Array(size);
    await read(raw, offset);
    const parsed = parseSnapshotTable(raw, count, clusterSize, size < limit);
    if (parsed) return parsed;
  }
}

/**
 * Parses `count` entries from `raw`. Returns undefined when `raw` ended
 * before the entries did and `more` says a longer read is possible.
 */
export function parseSnapshotTable(
  raw: Uint8Array,
  count: number,
  clusterSize: number,
  more = false,
): { entries: SnapshotEntry[]; size: number } | undefined {
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const entries: SnapshotEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 40 > raw.length) {
      if (more) return undefined;
      throw corrupt(`snapshot table entry ${i} runs past the snapshot table`);
    }
    const l1Offset = dv.getBigUint64(at);
    const l1Size = dv.getUint32(at + 8);
    const idLen = dv.getUint16(at + 12);
    const nameLen = dv.getUint16(at + 14);
    const extraLen = dv.getUint32(at + 36);
    if (extraLen > L.MAX_SNAPSHOT_EXTRA_DATA) throw corrupt(`snapshot ${i} has too much extra data (${extraLen} bytes)`);
    const end = at + 40 + extraLen + idLen + nameLen;
    if (end > raw.length) {
      if (more) return undefined;
      throw corrupt(`snapshot table entry ${i} runs past the snapshot table`);
    }
    if (l1Offset >= BigInt(L.MAX_HOST_OFFSET) || Number(l1Offset) % clusterSize !== 0) {
      throw corrupt(`snapshot ${i} has an invalid L1 table offset`);
    }
    if (l1Size * 8 > L.MAX_L1_BYTES) throw corrupt(`snapshot ${i} has an L1 table that is too large`);
    const extra = raw.subarray(at + 40, at + 40 + extraLen);
    const edv = new DataView(extra.buffer, extra.byteOffset, extra.byteLength);
    let vmStateSize = dv.getUint32(at + 32);
    let diskSize: number | undefined;
    if (extraLen >= 8) {
      const large = edv.getBigUint64(0);
      if (large >= BigInt(L.MAX_HOST_OFFSET)) throw corrupt(`snapshot ${i} has an impossible VM state size`);
      vmStateSize = Number(large);
    }
    if (extraLen >= 16) {
      const ds = edv.getBigUint64(8);
      if (ds >= BigInt(L.MAX_HOST_OFFSET)) throw corrupt(`snapshot ${i} has an impossible disk size`);
      diskSize = Number(ds);
    }
    const idStart = at + 40 + extraLen;
    entries.push({
      l1TableOffset: Number(l1Offset),
      l1Size,
      id: dec.decode(raw.subarray(idStart, idStart + idLen)),
      name: dec.decode(raw.subarray(idStart + idLen, end)),
      dateSec: dv.getUint32(at + 16),
      dateNsec: dv.getUint32(at + 20),
      vmClockNsec: dv.getBigUint64(at + 24),
      vmStateSize,
      diskSize,
      extraRest: extra.slice(Math.min(extraLen, L.SNAPSHOT_EXTRA_DATA_V3)),
      extraBytes: extraLen,
    });
    at = pad8(end);
    if (at > L.MAX_SNAPSHOT_TABLE_BYTES) throw corrupt('the snapshot table is larger than 64 MiB');
  }
  return { entries, size: at };
}

export function serializeSnapshotTable(entries: SnapshotEntry[], version: number): Uint8Array {
  const parts = entries.map((e) => {
    const id = enc.encode(e.id);
    const name = enc.encode(e.name);
    const hasExtra = version >= 3 || e.diskSize !== undefined || e.extraRest.length > 0;
    const extraLen = hasExtra ? L.SNAPSHOT_EXTRA_DATA_V3 + e.extraRest.length : 0;
    const out = new Uint8Array(pad8(40 + extraLen + id.length + name.length));
    const dv = new DataView(out.buffer);
    dv.setBigUint64(0, BigInt(e.l1TableOffset));
    dv.setUint32(8, e.l1Size);
    dv.setUint16(12, id.length);
    dv.setUint16(14, name.length);
    dv.setUint32(16, e.dateSec);
    dv.setUint32(20, e.dateNsec);
    dv.setBigUint64(24, e.vmClockNsec);
    dv.setUint32(32, Math.min(e.vmStateSize, 0xffffffff));
    dv.setUint32(36, extraLen);
    if (hasExtra) {
      dv.setBigUint64(40, BigInt(e.vmStateSize));
      dv.setBigUint64(48, BigInt(e.diskSize ?? 0));
      out.set(e.extraRest, 56);
    }
    out.set(id, 40 + extraLen);
    out.set(name, 40 + extraLen + id.length);
    return out;
  });
  const total = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    total.set(p, at);
    at += p.length;
  }
  return total;
}
