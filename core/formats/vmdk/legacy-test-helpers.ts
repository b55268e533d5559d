/**
 * Test helpers shared by the COWD and seSparse extent tests: opening an extent
 * file, listing its block-status runs, reading it with qemu-img as the judge,
 * and checking that a hostile file is refused with one clear sentence, quickly
 * and without a large allocation (core/test/hostile.ts).
 */
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import type { LayerExtent } from '../../image/driver.js';
import type { ErrorKind } from '../../image/errors.js';
import { openProtocol } from '../../io/open.js';
import type { Protocol } from '../../io/protocol.js';
import { expectRefused as refused } from '../../test/hostile.js';
import { sh } from '../../test/tmp.js';
import type { VmdkExtent } from './extent.js';

const MiB = 1024 * 1024;
/** A hostile file must be refused in well under this, without a buffer this large. */
const BOUNDS = { quickMs: 2_000, maxBuffer: 8 * MiB };

/** Opens `path` read-only and hands it to `open`. */
export async function openExtent(path: string, open: (file: Protocol) => Promise<VmdkExtent>): Promise<VmdkExtent> {
  const file = await openProtocol(path, { readOnly: true });
  try {
    return await open(file);
  } catch (err) {
    await file.close();
    throw err;
  }
}

/** Every block-status run of the extent, in order (offset, length, state, host offset). */
export async function statusRuns(extent: VmdkExtent): Promise<LayerExtent[]> {
  const runs: LayerExtent[] = [];
  for (let at = 0; at < extent.length; ) {
    const r = await extent.blockStatus(at, extent.length - at);
    expect(r.offset).toBe(at);
    expect(r.length).toBeGreaterThan(0);
    runs.push(r.hostOffset === undefined ? { offset: r.offset, length: r.length, state: r.state } : r);
    at += r.length;
  }
  return runs;
}

/** The whole extent read through Platter. */
export async function readAll(extent: VmdkExtent): Promise<Uint8Array> {
  const buf = new Uint8Array(extent.length);
  await extent.read(buf, 0);
  return buf;
}

/** Opens an extent and reads all of it, 1 MiB at a time (what a hostile test makes it do). */
export async function openAndReadAll(open: () => Promise<VmdkExtent>): Promise<void> {
  const extent = await open();
  try {
    const buf = new Uint8Array(1 << 20);
    for (let at = 0; at < extent.length; at += buf.length) {
      await extent.read(buf.subarray(0, Math.min(buf.length, extent.length - at)), at);
    }
  } finally {
    await extent.close();
  }
}

/** The guest contents as qemu-img reads them (`convert -f vmdk -O raw`). */
export function qemuRead(vmdk: string, raw: string): Uint8Array {
  sh('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', vmdk, raw]);
  return new Uint8Array(readFileSync(raw));
}

/** Whether qemu-img refuses to read a file (on open or on a read; a crash counts too). */
export function qemuRefuses(vmdk: string, raw: string): boolean {
  try {
    sh('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', vmdk, raw]);
    return false;
  } catch {
    return true;
  }
}

/**
 * `fn` (an open, or an open and a read) is refused with one sentence of the
 * expected kind about `path`, quickly and without a large allocation.
 */
export function expectRefused(fn: () => Promise<unknown>, path: string, kind: ErrorKind, message: RegExp): Promise<void> {
  return refused(fn, path, kind, message, BOUNDS);
}

/** A descriptor naming one extent of `type` (so qemu-img and the driver open it). */
export function oneExtentDescriptor(createType: string, type: string, extent: string, sectors: number): Uint8Array {
  const text = [
    '# Disk DescriptorFile',
    'version=1',
    'CID=12345678',
    'parentCID=ffffffff',
    `createType="${createType}"`,
    '',
    '# Extent description',
    `RW ${sectors} ${type} "${extent}"`,
    '',
  ].join('\n');
  return new TextEncoder().encode(text);
}
