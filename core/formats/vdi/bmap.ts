/**
 * The block map in memory: one little-endian u32 per guest block on disk,
 * read whole at open. Changes are kept as dirty sectors and written a sector
 * at a time when the image syncs its metadata.
 */
import type { Protocol } from '../../io/protocol.js';
import { bmapBytes } from './header.js';
import { SECTOR_SIZE } from './limits.js';

/** Map entries per sector: map writes are whole sectors. */
const ENTRIES_PER_SECTOR = SECTOR_SIZE / 4;

/** A copy of one map sector, as it was when taken. */
export interface MapSector {
  index: number;
  bytes: Uint8Array;
}

export class BlockMap {
  private readonly dirty = new Set<number>();

  constructor(public entries: Uint32Array) {}

  static async read(proto: Protocol, offset: number, blocks: number): Promise<BlockMap> {
    const bytes = new Uint8Array(bmapBytes(blocks));
    await proto.read(bytes, offset);
    const v = new DataView(bytes.buffer);
    const entries = new Uint32Array(blocks);
    for (let i = 0; i < blocks; i++) entries[i] = v.getUint32(i * 4, true);
    return new BlockMap(entries);
  }

  get(g: number): number {
    return this.entries[g];
  }

  set(g: number, entry: number): void {
    this.entries[g] = entry;
    this.dirty.add(Math.floor(g / ENTRIES_PER_SECTOR));
  }

  get hasChanges(): boolean {
    return this.dirty.size > 0;
  }

  /** Copies of the changed sectors as they are now; changes made later wait for the next take. */
  takeChanges(): MapSector[] {
    const sectors = [...this.dirty].sort((a, b) => a - b).map((index) => ({ index, bytes: this.sectorBytes(index) }));
    this.dirty.clear();
    return sectors;
  }

  /** Marks sectors changed again (their write failed). */
  restore(sectors: readonly MapSector[]): void {
    for (const s of sectors) this.dirty.add(s.index);
  }

  /** The whole map as stored on disk. */
  encode(): Uint8Array {
    const bytes = new Uint8Array(bmapBytes(this.entries.length));
    const v = new DataView(bytes.buffer);
    this.entries.forEach((e, i) => v.setUint32(i * 4, e, true));
    return bytes;
  }

  private sectorBytes(sector: number): Uint8Array {
    const first = sector * ENTRIES_PER_SECTOR;
    const out = new Uint8Array(SECTOR_SIZE);
    const v = new DataView(out.buffer);
    const n = Math.min(ENTRIES_PER_SECTOR, this.entries.length - first);
    for (let i = 0; i < n; i++) v.setUint32(i * 4, this.entries[first + i], true);
    return out;
  }
}

/** Writes map sectors at the map's `offset`, adjacent ones in one request. */
export async function writeMapSectors(proto: Protocol, offset: number, sectors: readonly MapSector[]): Promise<void> {
  for (let i = 0; i < sectors.length; ) {
    let j = i + 1;
    while (j < sectors.length && sectors[j].index === sectors[j - 1].index + 1) j++;
    const run = new Uint8Array((j - i) * SECTOR_SIZE);
    for (let k = i; k < j; k++) run.set(sectors[k].bytes, (k - i) * SECTOR_SIZE);
    await proto.write(run, offset + sectors[i].index * SECTOR_SIZE);
    i = j;
  }
}
