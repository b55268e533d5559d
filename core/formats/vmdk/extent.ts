/**
 * One extent of a VMDK: a file (or part of one) holding a contiguous run of
 * the guest disk. A descriptor lists extents in guest order; the image splits
 * each request at extent boundaries and hands each piece to its extent, with
 * offsets relative to the extent's first guest byte.
 *
 * Extent kinds differ only behind this interface: flat (FLAT, VMFS), hosted
 * sparse (SPARSE, streamOptimized), ESX sparse (VMFSSPARSE, VMDK3 "COWD") and
 * space-efficient sparse (SESPARSE).
 */
import type { LayerExtent } from '../../image/driver.js';
import type { Protocol } from '../../io/protocol.js';

/** What every extent can do: say what it holds and read it. */
export interface VmdkExtent {
  /** Guest bytes this extent covers (a multiple of 512). */
  readonly length: number;
  /** The file the extent's bytes are in. */
  readonly file: Protocol;
  /**
   * The run starting at `offset` (relative to the extent), at most `length`
   * long, in one state. 'unallocated' means "ask the parent image".
   */
  blockStatus(offset: number, length: number): Promise<LayerExtent>;
  /** Reads guest bytes; ranges that are not 'data' read as zeros. */
  read(buf: Uint8Array, offset: number): Promise<void>;
  close(): Promise<void>;
}

/** Extents Platter can change. */
export interface WritableExtent extends VmdkExtent {
  write(buf: Uint8Array, offset: number): Promise<void>;
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

export function isWritableExtent(e: VmdkExtent): e is WritableExtent {
  return typeof (e as Partial<WritableExtent>).write === 'function';
}
