/**
 * streamOptimized pieces: compressed grains behind grain markers, and the
 * tables, footer and end-of-stream marker VMware writes after the last grain
 * (the header's gdOffset then says "see the footer").
 */
import { promisify } from 'node:util';
import { deflate as deflateCb, inflateSync } from 'node:zlib';
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { leBytes } from './entries.js';
import * as L from './limits.js';
import { parseSparseHeader, serializeSparseHeader, type SparseHeader } from './sparse-header.js';

const deflate = promisify(deflateCb);

/**
 * A grain deflated, in one buffer: zlib's output chunk is made large enough
 * for incompressible data, so no chunks are joined (less garbage per grain).
 */
export async function compressGrain(grain: Uint8Array): Promise<Uint8Array> {
  // The largest hash table: 10-20% less time than the default for the same size.
  return deflate(grain, { memLevel: 9, chunkSize: grain.length + (grain.length >> 8) + 64 });
}

/** Bytes a compressed grain takes in a stream: marker (lba, size) and data, padded to a sector. */
export function storedGrainBytes(z: Uint8Array): number {
  return Math.ceil((L.GRAIN_MARKER_BYTES + z.length) / L.SECTOR) * L.SECTOR;
}

/** Puts a compressed grain with its marker at `at` in `out` (zeroed), as storedGrainBytes sizes it. */
export function putGrain(out: Uint8Array, at: number, lba: number, z: Uint8Array): void {
  const dv = new DataView(out.buffer, out.byteOffset + at, L.GRAIN_MARKER_BYTES);
  dv.setBigUint64(0, BigInt(lba), true);
  dv.setUint32(8, z.length, true);
  out.set(z, at + L.GRAIN_MARKER_BYTES);
}

/** The grain whose marker is at `sector`, decompressed (at most `grainBytes`). */
export async function inflateGrain(file: Protocol, sector: number, grainBytes: number): Promise<Uint8Array> {
  // One read for the marker and (usually) all of the data: grains seldom compress to more than themselves.
  let head = new Uint8Array(L.GRAIN_MARKER_BYTES + grainBytes);
  await file.read(head, sector * L.SECTOR);
  const size = new DataView(head.buffer).getUint32(8, true);
  // Same bound as QEMU: compressed data never takes more than two grains.
  if (size === 0 || size > 2 * grainBytes) {
    throw new BlockError('Corrupt', `the compressed grain at sector ${sector} claims ${size} bytes`);
  }
  if (L.GRAIN_MARKER_BYTES + size > head.length) {
    head = new Uint8Array(L.GRAIN_MARKER_BYTES + size);
    await file.read(head, sector * L.SECTOR);
  }
  const data = head.subarray(L.GRAIN_MARKER_BYTES, L.GRAIN_MARKER_BYTES + size);
  try {
    return inflateSync(data, { maxOutputLength: grainBytes });
  } catch (err) {
    throw new BlockError('Corrupt', `the compressed grain at sector ${sector} does not decompress`, {}, err);
  }
}

function marker(sectors: number, type: number): Uint8Array {
  const m = new Uint8Array(L.SECTOR);
  const dv = new DataView(m.buffer);
  dv.setBigUint64(0, BigInt(sectors), true);
  dv.setUint32(12, type, true);
  return m;
}

/** Reads the header copy in the footer (footer marker, header, end-of-stream marker: the last three sectors). */
export async function readFooter(file: Protocol, fileSize: number): Promise<SparseHeader> {
  const invalid = () => new BlockError('Corrupt', 'Invalid footer: the header says the grain directory is in a footer');
  if (fileSize < 4 * L.SECTOR || fileSize % L.SECTOR !== 0) throw invalid();
  const tail = new Uint8Array(3 * L.SECTOR);
  await file.read(tail, fileSize - tail.length);
  const dv = new DataView(tail.buffer);
  const footerOk = dv.getUint32(8, true) === 0 && dv.getUint32(12, true) === L.MARKER_FOOTER;
  const eos = 2 * L.SECTOR;
  const eosOk =
    dv.getBigUint64(eos, true) === 0n && dv.getUint32(eos + 8, true) === 0 && dv.getUint32(eos + 12, true) === L.MARKER_EOS;
  if (!footerOk || !eosOk) throw invalid();
  const header = parseSparseHeader(tail.subarray(L.SECTOR, 2 * L.SECTOR), 'footer');
  if (header.gdOffset === undefined) throw invalid();
  return header;
}

/**
 * Writes the end of a stream at `sector`: each grain table that maps
 * anything (after its marker), the grain directory (after its marker), the
 * footer (a marker and a copy of the header naming the directory) and the
 * end-of-stream marker. `gd` is filled in with the tables' sectors.
 */
export async function writeStreamTail(
  file: Protocol,
  header: SparseHeader,
  sector: number,
  gd: Uint32Array,
  tables: Map<number, Uint32Array>,
): Promise<void> {
  const parts: Uint8Array[] = [];
  let at = sector;
  const put = (bytes: Uint8Array) => {
    const padded = new Uint8Array(Math.ceil(bytes.length / L.SECTOR) * L.SECTOR);
    padded.set(bytes);
    parts.push(padded);
    at += padded.length / L.SECTOR;
  };
  const gtSectors = Math.ceil((header.gtesPerGt * 4) / L.SECTOR);
  gd.fill(0);
  for (let t = 0; t < gd.length; t++) {
    const gt = tables.get(t);
    if (!gt || gt.every((e) => e === 0)) continue;
    put(marker(gtSectors, L.MARKER_GT));
    gd[t] = at;
    put(leBytes(gt));
  }
  const gdSectors = Math.ceil((gd.length * 4) / L.SECTOR);
  put(marker(gdSectors, L.MARKER_GD));
  const gdAt = at;
  put(leBytes(gd));
  put(marker(1, L.MARKER_FOOTER));
  put(serializeSparseHeader({ ...header, gdOffset: gdAt }));
  put(marker(0, L.MARKER_EOS));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  await file.write(out, sector * L.SECTOR);
  await file.truncate(at * L.SECTOR);
}
