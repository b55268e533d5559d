/** Decoding qcow2 L1 and L2 entries into what a guest cluster is. */
import { BlockError } from '../../image/errors.js';
import * as L from './limits.js';
import { HI, LO } from './tables.js';

export type Mapping =
  /** Not in this image: read the backing file (or zeros). */
  | { kind: 'unallocated' }
  /** Reads as zeros; may keep a preallocated host cluster. */
  | { kind: 'zero'; host: number; copied: boolean }
  /** Stored at `host`; `copied` means its refcount is exactly one (writable in place). */
  | { kind: 'data'; host: number; copied: boolean }
  /** Deflated, `length` bytes from `host` (not aligned). */
  | { kind: 'compressed'; host: number; length: number }
  /**
   * Extended L2 only, a cluster whose subclusters differ: bit i of `alloc`
   * means subcluster i is data at `host` + its offset, bit i of `zero` that it
   * reads as zeros, neither that it is unallocated. `host` may be 0 (no host
   * cluster: then only zero bits). Uniform clusters decode to the kinds above.
   */
  | { kind: 'subclusters'; host: number; copied: boolean; alloc: number; zero: number };

export const UNALLOCATED: Mapping = { kind: 'unallocated' };

/** All 32 subclusters. */
export const ALL_SUBCLUSTERS = 0xffffffff;

/** The host cluster a standard (not compressed) mapping holds, 0 if none. */
export function hostOf(m: Mapping): number {
  return m.kind === 'data' || m.kind === 'zero' || m.kind === 'subclusters' ? m.host : 0;
}

/** The mapping with these subcluster bits, uniform ones as the plain kinds (`all`: the mask of every subcluster). */
export function fromSubclusters(
  host: number,
  copied: boolean,
  alloc: number,
  zero: number,
  all = ALL_SUBCLUSTERS,
): Mapping {
  if (alloc === all) return { kind: 'data', host, copied };
  if (zero === all) return { kind: 'zero', host, copied: copied && host !== 0 };
  if (!alloc && !zero && !host) return UNALLOCATED;
  return { kind: 'subclusters', host, copied: copied && host !== 0, alloc, zero };
}

/**
 * `decodeL2` for extended L2 entries. Bit 0 (the zero flag of standard
 * entries) means nothing here and is ignored, as QEMU ignores it.
 */
function decodeExtended(e: bigint, bitmap: bigint, clusterBits: number, where: () => string): Mapping {
  if (e & L.OFLAG_COMPRESSED) {
    if (bitmap) throw new BlockError('Corrupt', `${where()}: a compressed cluster has a nonzero subcluster bitmap`);
    return decodeL2(e, clusterBits, 3, where);
  }
  const m = decodeL2(e & ~L.OFLAG_ZERO, clusterBits, 3, where);
  const alloc = Number(bitmap & 0xffffffffn);
  const zero = Number(bitmap >> 32n);
  if (alloc & zero) throw new BlockError('Corrupt', `${where()}: a subcluster is marked both allocated and zero`);
  if (m.kind === 'unallocated') {
    if (alloc) {
      throw new BlockError('Corrupt', `${where()}: subclusters are marked allocated in a cluster without a host offset`);
    }
    return fromSubclusters(0, false, 0, zero);
  }
  const { host, copied } = m as { host: number; copied: boolean };
  return fromSubclusters(host, copied, alloc, zero);
}

/**
 * Decodes an L2 entry; `bitmap` is the second half of an extended entry
 * (undefined: a standard entry). With an external data file
 * (`externalData`), host offset 0 is a real place (guest cluster 0) when the
 * entry is marked copied.
 */
export function decodeL2(
  e: bigint,
  clusterBits: number,
  version: number,
  where: () => string,
  bitmap?: bigint,
  externalData = false,
): Mapping {
  if (bitmap !== undefined) return decodeExtended(e, bitmap, clusterBits, where);
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

/**
 * Bits 21-30 of an entry's high half (53-62 of the entry): compressed (62),
 * reserved (56-61) or an offset past MAX_HOST_OFFSET (53-55). With bits 0-8
 * of the low half (the zero flag and reserved bits), what the quick decoders
 * below leave to decodeL1 and decodeL2.
 */
const UNPLAIN_HIGH = 0x7fe00000;
const UNPLAIN_LOW = 0x1ff;

/**
 * decodeL1's offset for the entry with these 32-bit halves (0: no table),
 * without BigInt arithmetic, when the entry is plain: no flag but copied and
 * an aligned offset. Undefined otherwise, for decodeL1 to decode or refuse.
 */
export function plainL1Offset(hi: number, lo: number, clusterSize: number): number | undefined {
  if ((hi & UNPLAIN_HIGH) !== 0 || (lo & UNPLAIN_LOW) !== 0) return undefined;
  const offset = (hi & 0x1fffff) * 2 ** 32 + lo;
  return offset % clusterSize === 0 ? offset : undefined;
}

/** OFLAG_COPIED in an entry's high 32 bits. */
const COPIED_HIGH = 0x80000000;

/**
 * decodeL2 of a standard entry from its 32-bit halves, without BigInt
 * arithmetic, for the cases a plain image is made of: unallocated, or data
 * at an aligned offset. Undefined for anything else (compressed, zero,
 * reserved bits, a bad or zero offset), for decodeL2 to decode or refuse.
 */
export function decodePlainL2(hi: number, lo: number, clusterSize: number): Mapping | undefined {
  if ((hi | lo) === 0) return UNALLOCATED;
  if ((hi & UNPLAIN_HIGH) !== 0 || (lo & UNPLAIN_LOW) !== 0) return undefined;
  const host = (hi & 0x1fffff) * 2 ** 32 + lo;
  if (host === 0 || host % clusterSize !== 0) return undefined;
  return { kind: 'data', host, copied: (hi & COPIED_HIGH) !== 0 };
}

/**
 * Entry `j` of standard L2 table halves `w` (see halvesOf) set to data at
 * `host` (a cluster-aligned offset below MAX_HOST_OFFSET), copied: what
 * encodeL2 makes of it, without BigInt arithmetic.
 */
export function setPlainL2(w: Uint32Array, j: number, host: number): void {
  w[2 * j + HI] = (Math.floor(host / 2 ** 32) | COPIED_HIGH) >>> 0;
  w[2 * j + LO] = host >>> 0;
}

/** The first (or only) 64 bits of an L2 entry for `m`; `extended` images keep zeros in the bitmap instead. */
export function encodeL2(m: Mapping, clusterBits: number, extended = false): bigint {
  switch (m.kind) {
    case 'unallocated':
      return 0n;
    case 'zero':
    case 'subclusters':
      return (extended ? 0n : L.OFLAG_ZERO) | BigInt(m.host) | (m.copied && m.host ? L.OFLAG_COPIED : 0n);
    case 'data':
      return BigInt(m.host) | (m.copied ? L.OFLAG_COPIED : 0n);
    case 'compressed': {
      const x = BigInt(62 - (clusterBits - 8));
      const sectors = BigInt(Math.ceil((m.host % 512 + m.length) / 512) - 1);
      return L.OFLAG_COMPRESSED | (sectors << x) | BigInt(m.host);
    }
  }
}

/** The subcluster bitmap of an extended L2 entry for `m` (compressed clusters have none). */
export function encodeBitmap(m: Mapping): bigint {
  switch (m.kind) {
    case 'data':
      return 0xffffffffn;
    case 'zero':
      return 0xffffffff00000000n;
    case 'subclusters':
      return (BigInt(m.zero) << 32n) | BigInt(m.alloc);
    default:
      return 0n;
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
