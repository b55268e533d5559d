/**
 * Cluster compression as qcow2 stores it: raw deflate (compression_type
 * zlib) or zstd frames (compression_type zstd). A compressed cluster's
 * stored length is rounded up to whole sectors, so what is read may carry
 * trailing bytes that belong to the next cluster; decompressing stops once a
 * full cluster came out.
 */
import { promisify } from 'node:util';
import { deflateRaw, inflateRawSync } from 'node:zlib';
import { BlockError } from '../../image/errors.js';

export const COMPRESSION_TYPES = ['zlib', 'zstd'] as const;
export type CompressionType = (typeof COMPRESSION_TYPES)[number];

export interface Codec {
  /** The cluster compressed, or undefined when that would not save a byte. */
  compress(cluster: Uint8Array): Promise<Uint8Array | undefined>;
  /** Exactly `clusterSize` bytes from `raw` (which may carry trailing bytes). */
  decompress(raw: Uint8Array, clusterSize: number): Uint8Array;
}

const deflate = promisify(deflateRaw);

const zlibCodec: Codec = {
  async compress(cluster) {
    // QEMU's parameters: a 4 KiB window.
    const z = await deflate(cluster, { windowBits: 12, memLevel: 9 });
    return z.length < cluster.length ? new Uint8Array(z.buffer, z.byteOffset, z.length) : undefined;
  },
  decompress(raw, clusterSize) {
    const data = inflateRawSync(raw, { maxOutputLength: clusterSize, finishFlush: 2 /* Z_SYNC_FLUSH */ });
    // A stream that ends early leaves the rest of the cluster zero, as in QEMU.
    if (data.length === clusterSize) return data;
    const full = new Uint8Array(clusterSize);
    full.set(data);
    return full;
  },
};

/** zstd's default level, which QEMU uses. */
const ZSTD_LEVEL = 3;
const ZSTD_MAGIC = 0xfd2fb528;
const SKIPPABLE_MAGIC = 0x184d2a50;

/**
 * The length of the zstd frame at the start of `buf` and the content size its
 * header declares (undefined when absent), from the frame and block headers
 * (RFC 8878). Walking the blocks is what finds where a frame ends, so that the
 * bytes after it are never fed to the decoder.
 */
export function zstdFrame(buf: Uint8Array): { length: number; contentSize?: number; skippable: boolean } {
  const bad = (why: string) => new BlockError('Corrupt', `zstd data ${why}`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.length < 8) throw bad('is truncated');
  const magic = dv.getUint32(0, true);
  if ((magic & 0xfffffff0) === SKIPPABLE_MAGIC) {
    const length = 8 + dv.getUint32(4, true);
    if (length > buf.length) throw bad('has a skippable frame past its end');
    return { length, skippable: true };
  }
  if (magic !== ZSTD_MAGIC) throw bad('does not start with a frame');
  const fhd = buf[4];
  if (fhd & 0x08) throw bad('has a reserved header bit set');
  const singleSegment = (fhd & 0x20) !== 0;
  const fcsFlag = fhd >> 6;
  const fcsSize = fcsFlag === 0 ? (singleSegment ? 1 : 0) : 2 ** fcsFlag;
  const didSize = [0, 1, 2, 4][fhd & 3];
  let at = 5 + (singleSegment ? 0 : 1) + didSize;
  if (at + fcsSize > buf.length) throw bad('is truncated');
  let contentSize: number | undefined;
  if (fcsSize === 1) contentSize = buf[at];
  else if (fcsSize === 2) contentSize = dv.getUint16(at, true) + 256;
  else if (fcsSize === 4) contentSize = dv.getUint32(at, true);
  else if (fcsSize === 8) contentSize = Number(dv.getBigUint64(at, true));
  at += fcsSize;
  for (let last = false; !last; ) {
    if (at + 3 > buf.length) throw bad('is truncated');
    const bh = buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16);
    last = (bh & 1) !== 0;
    const type = (bh >> 1) & 3;
    if (type === 3) throw bad('has a reserved block type');
    at += 3 + (type === 1 ? 1 : bh >>> 3);
  }
  if (fhd & 0x04) at += 4;
  if (at > buf.length) throw bad('is truncated');
  return { length: at, contentSize, skippable: false };
}

type ZstdModule = typeof import('@bokuweb/zstd-wasm');
let zstd: ZstdModule | undefined;
let zstdReady: Promise<void> | undefined;
/**
 * Loads the zstd WebAssembly module (once; images using zstd call it on
 * open). Imported only then: loading it costs ~40 ms, which every other
 * command would pay at start.
 */
export function loadZstd(): Promise<void> {
  zstdReady ??= import('@bokuweb/zstd-wasm').then(async (m) => {
    await m.init();
    zstd = m;
  });
  return zstdReady;
}

function zstdModule(): ZstdModule {
  if (!zstd) throw new BlockError('Unsupported', 'zstd is not loaded (open the image through openQcow2)');
  return zstd;
}

const zstdCodec: Codec = {
  async compress(cluster) {
    await loadZstd();
    const z = zstdModule().compress(cluster, ZSTD_LEVEL);
    return z.length < cluster.length ? z : undefined;
  },
  decompress(raw, clusterSize) {
    // Frames one after another until a whole cluster came out (QEMU allows several).
    const out = new Uint8Array(clusterSize);
    let filled = 0;
    for (let at = 0; filled < clusterSize; ) {
      const frame = zstdFrame(raw.subarray(at));
      const bytes = raw.subarray(at, at + frame.length);
      at += frame.length;
      if (frame.skippable) continue;
      // The decoder sizes its output from the header: never trust it past the cluster.
      const room = clusterSize - filled;
      if (frame.contentSize !== undefined && frame.contentSize > room) {
        throw new BlockError('Corrupt', 'zstd data decompresses to more than a cluster');
      }
      let data: Uint8Array;
      try {
        data = zstdModule().decompress(bytes, { defaultHeapSize: room });
      } catch (err) {
        throw new BlockError('Corrupt', 'zstd data does not decompress', {}, err);
      }
      out.set(data, filled);
      filled += data.length;
    }
    if (filled < clusterSize) throw new BlockError('Corrupt', 'zstd data ends before a whole cluster');
    return out;
  },
};

export function codecFor(type: CompressionType): Codec {
  return type === 'zstd' ? zstdCodec : zlibCodec;
}
