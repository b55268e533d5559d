/**
 * What the two legacy sparse extents (COWD and seSparse) share: a grain
 * directory whose entries locate grain tables, whose entries locate grains.
 * The kinds differ only in how entries are encoded; this reader does the rest
 * (bounds, a small table cache, runs for block status, reads).
 */
import type { LayerExtent, LayerState } from '../../image/driver.js';
import { BlockError, toBlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import type { VmdkExtent } from './extent.js';
import { MAX_ENTRIES_PER_STATUS, TABLE_CACHE_SIZE } from './legacy-limits.js';

/** How one grain reads in this layer, and where its bytes are when stored. */
export interface Grain {
  state: LayerState;
  hostOffset?: number;
}

/** What a kind of extent tells the shared reader. */
export interface GrainLayout {
  /** Guest bytes the extent covers. */
  length: number;
  /** Bytes per grain. */
  grainSize: number;
  /** Entries per grain table. */
  tableEntries: number;
  /** Bytes per grain-table entry. */
  entryBytes: number;
  /** Tables and grains start at or after this byte (headers come first). */
  dataStart: number;
  /**
   * Host byte offset of grain table `index`, or undefined when its directory
   * entry is empty. Throws a Corrupt BlockError for an invalid entry.
   */
  tableOffset(index: number): number | undefined;
  /** Decodes entry `index` of a table; throws a Corrupt BlockError for an invalid one. */
  grain(table: DataView, index: number): Grain;
}

/** A Corrupt error without context: the reader adds the file, the operation and the offset. */
export function corrupt(message: string): BlockError {
  return new BlockError('Corrupt', message);
}

/** A grain, or the whole table's range when the table itself is absent. */
type Lookup = Grain & { wholeTable?: boolean };

export class GrainMapExtent implements VmdkExtent {
  readonly length: number;
  /** Loaded tables by host offset, least recently used first. */
  private readonly tables = new Map<number, DataView>();

  constructor(
    readonly file: Protocol,
    private readonly fileSize: number,
    private readonly layout: GrainLayout,
  ) {
    this.length = layout.length;
  }

  async blockStatus(offset: number, length: number): Promise<LayerExtent> {
    this.checkRange(offset, Math.min(length, this.length - offset), 'block status');
    try {
      return await this.run(offset, Math.min(offset + length, this.length));
    } catch (err) {
      throw toBlockError(err, { path: this.file.name, op: 'read', offset });
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.checkRange(offset, buf.length, 'read');
    let done = 0;
    while (done < buf.length) {
      const ext = await this.blockStatus(offset + done, buf.length - done);
      const part = buf.subarray(done, done + ext.length);
      if (ext.state === 'data' && ext.hostOffset !== undefined) await this.file.read(part, ext.hostOffset);
      else part.fill(0);
      done += ext.length;
    }
  }

  async close(): Promise<void> {
    this.tables.clear();
    await this.file.close();
  }

  /**
   * The run from `offset` (before `end`) in one state, with contiguous host
   * bytes when stored; shorter when it would take more than
   * MAX_ENTRIES_PER_STATUS lookups.
   */
  private async run(offset: number, end: number): Promise<LayerExtent> {
    const { grainSize, tableEntries } = this.layout;
    let state: LayerState = 'unallocated';
    let firstHost: number | undefined;
    let at = offset;
    for (let budget = MAX_ENTRIES_PER_STATUS; at < end && budget > 0; budget--) {
      const index = Math.floor(at / grainSize);
      const g = await this.lookup(index);
      const host = g.hostOffset === undefined ? undefined : g.hostOffset + (at - index * grainSize);
      if (at === offset) {
        state = g.state;
        firstHost = host;
      } else if (g.state !== state || (firstHost !== undefined && host !== firstHost + (at - offset))) {
        break;
      }
      const stepEnd = g.wholeTable ? (Math.floor(index / tableEntries) + 1) * tableEntries : index + 1;
      at = Math.min(end, stepEnd * grainSize);
    }
    return { offset, length: at - offset, state, hostOffset: firstHost };
  }

  private async lookup(index: number): Promise<Lookup> {
    const { tableEntries, grainSize } = this.layout;
    const tableIndex = Math.floor(index / tableEntries);
    const tableAt = this.layout.tableOffset(tableIndex);
    if (tableAt === undefined) return { state: 'unallocated', wholeTable: true };
    const g = this.layout.grain(await this.table(tableAt, tableIndex), index % tableEntries);
    if (g.hostOffset !== undefined) {
      // Only the guest part of a last, partial grain has to be in the file.
      const needed = Math.min(grainSize, this.length - index * grainSize);
      this.checkInFile(g.hostOffset, needed, `grain ${index}`);
    }
    return g;
  }

  private async table(at: number, index: number): Promise<DataView> {
    const cached = this.tables.get(at);
    if (cached) {
      this.tables.delete(at);
      this.tables.set(at, cached);
      return cached;
    }
    const bytes = this.layout.tableEntries * this.layout.entryBytes;
    this.checkInFile(at, bytes, `grain table ${index}`);
    const buf = new Uint8Array(bytes);
    await this.file.read(buf, at);
    const table = new DataView(buf.buffer);
    this.tables.set(at, table);
    if (this.tables.size > TABLE_CACHE_SIZE) this.tables.delete(this.tables.keys().next().value as number);
    return table;
  }

  private checkInFile(at: number, bytes: number, what: string): void {
    if (at < this.layout.dataStart) throw corrupt(`${what} at byte ${at} overlaps the header`);
    if (at + bytes > this.fileSize) throw corrupt(`${what} at byte ${at} lies beyond the end of the file`);
  }

  private checkRange(offset: number, length: number, op: string): void {
    const valid = Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0;
    if (!valid || offset + length > this.length) {
      const message = `${op} of ${length} bytes at ${offset} is outside the extent (${this.length} bytes)`;
      throw new BlockError('OutOfBounds', message, { path: this.file.name, op: 'read', offset });
    }
  }
}
