/**
 * The metadata region: a 64 KiB table of items, then the items. Platter
 * needs the five the spec requires (file parameters, virtual disk size,
 * page 83 data, logical and physical sector sizes) and, for a differencing
 * disk, the parent locator. Unknown items are skipped unless marked
 * required (as QEMU does).
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import * as G from './guid.js';
import * as L from './limits.js';
import type { Region } from './region.js';

export interface ParentLocator {
  /** Keys as stored (parent_linkage, relative_path, volume_path, absolute_win32_path...). */
  entries: Map<string, string>;
}

export interface VhdxMetadata {
  blockSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  diskSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  page83: Uint8Array;
  parent?: ParentLocator;
  /** Where the virtual disk size item is in the file (resize rewrites it). */
  diskSizeOffset: number;
}

interface Item {
  offset: number;
  length: number;
}

const fail = (message: string, kind: 'Corrupt' | 'Unsupported' = 'Corrupt'): never => {
  throw new BlockError(kind, message, { op: 'open' });
};

const KNOWN = [
  ['file parameters', G.FILE_PARAMETERS_GUID, 8],
  ['virtual disk size', G.VIRTUAL_DISK_SIZE_GUID, 8],
  ['page 83 data', G.PAGE83_GUID, 16],
  ['logical sector size', G.LOGICAL_SECTOR_GUID, 4],
  ['physical sector size', G.PHYSICAL_SECTOR_GUID, 4],
  ['parent locator', G.PARENT_LOCATOR_GUID, 20],
] as const;
type Known = (typeof KNOWN)[number][0];

/** The table's items, each checked to lie inside the region. */
function parseTable(table: Uint8Array, region: Region): Map<Known, Item> {
  if (String.fromCharCode(...table.subarray(0, 8)) !== L.METADATA_SIGNATURE) {
    fail('the VHDX metadata table has no "metadata" signature');
  }
  const v = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const count = v.getUint16(10, true);
  if (count > L.MAX_METADATA_ENTRIES) {
    fail(`the VHDX metadata table has ${count} entries, more than ${L.MAX_METADATA_ENTRIES}`);
  }
  const items = new Map<Known, Item>();
  for (let i = 0; i < count; i++) {
    const at = 32 + i * 32;
    const id = table.subarray(at, at + 16);
    const offset = v.getUint32(at + 16, true);
    const length = v.getUint32(at + 20, true);
    const flags = v.getUint32(at + 24, true);
    const known = KNOWN.find(([, g]) => G.guidEquals(g, id));
    if (!known) {
      if (flags & L.META_IS_REQUIRED) fail(`VHDX metadata item ${i} is required but unknown`, 'Unsupported');
      continue;
    }
    const [name, , minLength] = known;
    if (items.has(name)) fail(`the VHDX metadata table lists the ${name} twice`);
    if (length < minLength || length > L.MAX_METADATA_ITEM) fail(`the VHDX ${name} item is ${length} bytes long`);
    if (offset < L.METADATA_TABLE_SIZE || offset + length > region.length) {
      const item = `the VHDX ${name} item (offset 0x${offset.toString(16)}, ${length} bytes)`;
      fail(`${item} is outside the metadata region (${region.length} bytes)`);
    }
    items.set(name, { offset, length });
  }
  for (const [name] of KNOWN.slice(0, 5)) if (!items.has(name)) fail(`the VHDX metadata has no ${name} item`);
  return items;
}

async function readItem(proto: Protocol, region: Region, item: Item): Promise<Uint8Array> {
  const buf = new Uint8Array(item.length);
  await proto.read(buf, region.offset + item.offset);
  return buf;
}

export async function readMetadata(proto: Protocol, region: Region): Promise<VhdxMetadata> {
  if (region.length < L.METADATA_TABLE_SIZE) {
    fail(`the VHDX metadata region is ${region.length} bytes, smaller than its table`);
  }
  const table = new Uint8Array(L.METADATA_TABLE_SIZE);
  await proto.read(table, region.offset);
  const items = parseTable(table, region);
  const item = async (name: Known) => {
    const b = await readItem(proto, region, items.get(name)!);
    return { b, v: new DataView(b.buffer) };
  };
  const params = await item('file parameters');
  const blockSize = params.v.getUint32(0, true);
  const bits = params.v.getUint32(4, true);
  if (blockSize < L.MIN_BLOCK_SIZE || blockSize > L.MAX_BLOCK_SIZE || blockSize & (blockSize - 1)) {
    fail(`the VHDX block size ${blockSize} is not a power of two from 1 MiB to 256 MiB`);
  }
  const logical = (await item('logical sector size')).v.getUint32(0, true);
  const physical = (await item('physical sector size')).v.getUint32(0, true);
  for (const [what, n] of [['logical', logical], ['physical', physical]] as const) {
    if (!(L.SECTOR_SIZES as readonly number[]).includes(n)) {
      fail(`the VHDX ${what} sector size ${n} is not 512 or 4096`);
    }
  }
  const rawSize = (await item('virtual disk size')).v.getBigUint64(0, true);
  if (rawSize > BigInt(L.MAX_DISK_SIZE)) fail(`the VHDX virtual disk size ${rawSize} is larger than 64 TiB`);
  const diskSize = Number(rawSize);
  if (diskSize % logical) {
    fail(`the VHDX virtual disk size ${diskSize} is not a multiple of the ${logical}-byte sector`);
  }
  const hasParent = (bits & L.PARAM_HAS_PARENT) !== 0;
  let parent: ParentLocator | undefined;
  if (hasParent) {
    if (!items.has('parent locator')) fail('the VHDX file has a parent but no parent locator');
    parent = parseParentLocator((await item('parent locator')).b);
  }
  return {
    blockSize,
    leaveBlocksAllocated: (bits & L.PARAM_LEAVE_BLOCKS_ALLOCATED) !== 0,
    hasParent,
    diskSize,
    logicalSectorSize: logical,
    physicalSectorSize: physical,
    page83: (await item('page 83 data')).b,
    parent,
    diskSizeOffset: region.offset + items.get('virtual disk size')!.offset,
  };
}

/** The parent locator's UTF-16LE key/value pairs, each checked to lie inside the item. */
export function parseParentLocator(b: Uint8Array): ParentLocator {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (!G.guidEquals(b.subarray(0, 16), G.PARENT_TYPE_VHDX_GUID)) {
    fail('the VHDX parent locator is not of the VHDX type', 'Unsupported');
  }
  const count = v.getUint16(18, true);
  if (20 + count * 12 > b.length) {
    fail(`the VHDX parent locator's ${count} entries do not fit in its ${b.length} bytes`);
  }
  const utf16 = new TextDecoder('utf-16le');
  const entries = new Map<string, string>();
  const text = (offset: number, length: number) => {
    if (length === 0 || length % 2 || offset + length > b.length) {
      fail('a VHDX parent locator entry is outside the locator');
    }
    return utf16.decode(b.subarray(offset, offset + length));
  };
  for (let i = 0; i < count; i++) {
    const at = 20 + i * 12;
    const key = text(v.getUint32(at, true), v.getUint16(at + 8, true));
    entries.set(key, text(v.getUint32(at + 4, true), v.getUint16(at + 10, true)));
  }
  if (!entries.has('parent_linkage')) fail('the VHDX parent locator has no parent_linkage');
  return { entries };
}

/**
 * The parent's file name for a backing reference: the relative path first
 * (as libvhdi and Hyper-V try it), backslashes made portable.
 */
export function parentFileName(p: ParentLocator): string | undefined {
  const name = p.entries.get('relative_path') ?? p.entries.get('absolute_win32_path') ?? p.entries.get('volume_path');
  if (name === undefined) return undefined;
  return name.replace(/\\/g, '/').replace(/^\.\//, '');
}

/** The metadata region of a new image: table and the five required items, as QEMU lays them out. */
export function serializeMetadata(m: {
  blockSize: number;
  fixed: boolean;
  diskSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  page83: Uint8Array;
}): Uint8Array {
  const items: [Uint8Array, Uint8Array, number][] = [];
  const u32s = (...n: number[]) => {
    const b = new Uint8Array(n.length * 4);
    n.forEach((x, i) => new DataView(b.buffer).setUint32(i * 4, x, true));
    return b;
  };
  const size = new Uint8Array(8);
  new DataView(size.buffer).setBigUint64(0, BigInt(m.diskSize), true);
  const vd = L.META_IS_REQUIRED | L.META_IS_VIRTUAL_DISK;
  const params = u32s(m.blockSize, m.fixed ? L.PARAM_LEAVE_BLOCKS_ALLOCATED : 0);
  items.push([G.FILE_PARAMETERS_GUID, params, L.META_IS_REQUIRED]);
  items.push([G.VIRTUAL_DISK_SIZE_GUID, size, vd]);
  items.push([G.PAGE83_GUID, m.page83, vd]);
  items.push([G.LOGICAL_SECTOR_GUID, u32s(m.logicalSectorSize), vd]);
  items.push([G.PHYSICAL_SECTOR_GUID, u32s(m.physicalSectorSize), vd]);
  const buf = new Uint8Array(L.METADATA_TABLE_SIZE + 64);
  const v = new DataView(buf.buffer);
  buf.set(new TextEncoder().encode(L.METADATA_SIGNATURE), 0);
  v.setUint16(10, items.length, true);
  let offset = L.METADATA_TABLE_SIZE;
  items.forEach(([id, data, flags], i) => {
    const at = 32 + i * 32;
    buf.set(id, at);
    v.setUint32(at + 16, offset, true);
    v.setUint32(at + 20, data.length, true);
    v.setUint32(at + 24, flags, true);
    buf.set(data, offset);
    offset += data.length;
  });
  return buf;
}
