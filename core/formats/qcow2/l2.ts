/** Decoding qcow2 L1 and L2 entries into what a guest cluster is. */
import { BlockError } from '../../image/errors.js';
import * as L from './limits.js';

export type Mapping =
  /** Not in this image: read the backing file (or zeros). */
  | { kind: 'unallocated' }
  /** Reads as zeros; may keep a preallocated host cluster. */
  | { kind: 'zero'; host: number; copied: boolean }
  /** Stored at `host`; `copied` means its refcount is exactly one (writable in place). */
  | { kind: 'data'; host: number; copied: boolean }
  /** Deflated, `length` bytes from `host` (not aligned). */
  | { kind: 'compressed'; host: number; length: number };

export const UNALLOCATED: Mapping = { kind: 'unallocated' };

/**
 * What an L2 entry maps. With an external data file (`externalData`), host
 * offset 0 is a real place (guest cluster 0) when the entry is marked copied.
 */
export function decodeL2(e: bigint, clusterBits: number, version: number, where: () => string, externalData = false): Mapping {
  if (e === 0n) return UNALLOCATED;
  if (e & L.OFLAG_COMPRESSED) {
    if (e & L.OFLAG_COPIED) throw new BlockError('Corrupt', `${where()}: a compressed cluster is marked copied`);
    const x = BigInt(62 - (clusterBits - 8));
    const host = Number(e & ((1n << x) - 1n));
    const sectors = Number((e >> x) & ((1n << (62n - x)) - 1n)) + 1;
    if (host >= L.MAX_HOST_OFFSET) throw new BlockError('Corrupt', `${where()}: compressed data at an impossible offset`);
    const end = Math.floor(host / 512) * 512 + sectors * 512;
    return { kind: 'compressed', host, length: end - host };
  }
  if (e & L.L2_STANDARD_RESERVED_MASK) throw new BlockError('Corrupt', `${where()}: reserved bits are set`);
  const host = Number(e & L.OFFSET_MASK);
  const copied = (e & L.OFLAG_COPIED) !== 0n;
  if (host >= L.MAX_HOST_OFFSET) throw new BlockError('Corrupt', `${where()}: data at an impossible offset (${host})`);
  if (host % 2 ** clusterBits !== 0) throw new BlockError('Corrupt', `${where()}: host offset ${host} is not cluster aligned`);
  if (e & L.OFLAG_ZERO) {
    if (version < 3) throw new BlockError('Corrupt', `${where()}: zero flag in a version 2 image`);
    return { kind: 'zero', host, copied };
  }
  if (host === 0 && !(externalData && copied)) {
    if (copied) throw new BlockError('Corrupt', `${where()}: cluster marked copied without an offset`);
    return UNALLOCATED;
  }
  return { kind: 'data', host, copied };
}

export function encodeL2(m: Mapping, clusterBits: number): bigint {
  switch (m.kind) {
    case 'unallocated':
      return 0n;
    case 'zero':
      return L.OFLAG_ZERO | BigInt(m.host) | (m.copied && m.host ? L.OFLAG_COPIED : 0n);
    case 'data':
      return BigInt(m.host) | (m.copied ? L.OFLAG_COPIED : 0n);
    case 'compressed': {
      const x = BigInt(62 - (clusterBits - 8));
      const sectors = BigInt(Math.ceil((m.host % 512 + m.length) / 512) - 1);
      return L.OFLAG_COMPRESSED | (sectors << x) | BigInt(m.host);
    }
  }
}

/** The L2 table offset in an L1 entry (0: none), validated. */
export function decodeL1(e: bigint, clusterSize: number, index: number): { offset: number; copied: boolean } {
  if (e & L.L1_RESERVED_MASK) throw new BlockError('Corrupt', `L1 entry ${index} has reserved bits set`);
  const offset = Number(e & L.OFFSET_MASK);
  if (offset >= L.MAX_HOST_OFFSET) throw new BlockError('Corrupt', `L1 entry ${index} points at an impossible offset (${offset})`);
  if (offset % clusterSize !== 0) throw new BlockError('Corrupt', `L1 entry ${index} is not cluster aligned`);
  return { offset, copied: (e & L.OFLAG_COPIED) !== 0n };
}
