/**
 * GUIDs as VHDX stores them (Microsoft's layout: the first three fields
 * little-endian, the last eight bytes as written).
 */
import { randomBytes } from 'node:crypto';

/** The 16 stored bytes of a GUID written "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". */
export function guid(text: string): Uint8Array {
  const h = text.replace(/-/g, '');
  const b = Uint8Array.from({ length: 16 }, (_, i) => parseInt(h.slice(i * 2, i * 2 + 2), 16));
  return Uint8Array.from([b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], ...b.subarray(8)]);
}

export function guidEquals(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === 16 && b.length === 16 && a.every((x, i) => x === b[i]);
}

export function isNullGuid(g: Uint8Array): boolean {
  return g.every((x) => x === 0);
}

/** A new random (version 4) GUID, in stored order. */
export function newGuid(): Uint8Array {
  const u = randomBytes(16);
  u[6] = (u[6] & 0x0f) | 0x40;
  u[8] = (u[8] & 0x3f) | 0x80;
  return new Uint8Array(u.buffer, u.byteOffset, 16).slice();
}

/** Region table GUIDs. */
export const BAT_GUID = guid('2dc27766-f623-4200-9d64-115e9bfd4a08');
export const METADATA_GUID = guid('8b7ca206-4790-4b9a-b8fe-575f050f886e');
/** Metadata item GUIDs. */
export const FILE_PARAMETERS_GUID = guid('caa16737-fa36-4d43-b3b6-33f0aa44e76b');
export const VIRTUAL_DISK_SIZE_GUID = guid('2fa54224-cd1b-4876-b211-5dbed83bf4b8');
export const PAGE83_GUID = guid('beca12ab-b2e6-4523-93ef-c309e000c746');
export const LOGICAL_SECTOR_GUID = guid('8141bf1d-a96f-4709-ba47-f233a8faab5f');
export const PHYSICAL_SECTOR_GUID = guid('cda348c7-445d-4471-9cc9-e9885251c556');
export const PARENT_LOCATOR_GUID = guid('a8d35f2d-b30b-454d-abf7-d3d84834ab0c');
/** The parent locator type of a VHDX parent. */
export const PARENT_TYPE_VHDX_GUID = guid('b04aefb7-d19e-4a81-b789-25b8e9445913');
