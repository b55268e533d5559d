/**
 * Test helpers shared by the COWD and seSparse extent tests: opening an extent
 * file, listing its block-status runs, reading it with qemu-img as the judge,
 * and checking that a hostile file is refused with one clear sentence, quickly
 * and without a large allocation.
 */
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import type { LayerExtent } from '../../image/driver.js';
import { BlockError, type ErrorKind } from '../../image/errors.js';
import { openProtocol } from '../../io/open.js';
import type { Protocol } from '../../io/protocol.js';
import { sh } from '../../test/tmp.js';
import type { VmdkExtent } from './extent.js';

const MiB = 1024 * 1024;
/** A hostile file must be refused in well under this. */
const QUICK_MS = 2_000;
/** No single buffer made while refusing a tiny hostile file may reach this. */
const MAX_BUFFER = 8 * MiB;

/** Messages that are JavaScript leaking through instead of a sentence about the file. */
const RAW_JS_TEXT = new RegExp(
  'DataView|typed array|out of range|outside the bounds|Invalid array length|Cannot read prop|undefined|NaN|' +
    'ERR_[A-Z_]+|RangeError|TypeError|is not a function',
);

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
 * Runs `fn` and returns what it threw, failing if it did not throw, took long
 * or made one buffer of MAX_BUFFER bytes or more (the typed-array constructors
 * are watched, so a size taken from a hostile field shows even if freed).
 */
async function boundedRejection(fn: () => Promise<unknown>): Promise<unknown> {
  const g = globalThis as unknown as Record<string, unknown>;
  const names = ['ArrayBuffer', 'Uint8Array', 'BigUint64Array'];
  const saved = names.map((name) => [name, g[name]] as const);
  let largest = 0;
  for (const [name, original] of saved) {
    g[name] = new Proxy(original as new (...args: unknown[]) => { byteLength: number }, {
      construct(target, args) {
        const made = Reflect.construct(target, args, target) as { byteLength: number };
        largest = Math.max(largest, made.byteLength);
        return made;
      },
    });
  }
  const started = performance.now();
  let error: unknown;
  let threw = false;
  try {
    await fn();
  } catch (err) {
    threw = true;
    error = err;
  } finally {
    for (const [name, original] of saved) g[name] = original;
  }
  expect(performance.now() - started, 'took too long').toBeLessThan(QUICK_MS);
  expect(largest, 'the largest single buffer').toBeLessThan(MAX_BUFFER);
  expect(threw, 'expected the file to be refused, but it was accepted').toBe(true);
  return error;
}

/**
 * `fn` (an open, or an open and a read) is refused with one sentence of the
 * expected kind about `path`, quickly and without a large allocation.
 */
export async function expectRefused(
  fn: () => Promise<unknown>,
  path: string,
  kind: ErrorKind,
  message: RegExp,
): Promise<void> {
  const err = await boundedRejection(fn);
  if (!(err instanceof BlockError)) throw err;
  expect({ kind: err.kind, message: err.message, path: err.context.path }).toEqual({
    kind,
    message: expect.stringMatching(message),
    path,
  });
  expect(err.message).not.toMatch(RAW_JS_TEXT);
  expect(err.message).not.toContain('\n');
}
