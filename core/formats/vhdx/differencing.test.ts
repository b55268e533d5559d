/**
 * Differencing VHDX images (which neither qemu-img nor Platter create):
 * built here from a Platter image by setting HasParent, adding a parent
 * locator (UTF-16LE key/value pairs) and a sector bitmap. Reads fall
 * through to the parent for blocks not present and for the sectors of a
 * partially present block whose bitmap bit is clear.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { rejection } from '../../test/hostile.js';
import { tempDir } from '../../test/tmp.js';
import { PARENT_LOCATOR_GUID, PARENT_TYPE_VHDX_GUID } from './guid.js';

const KiB = 1024;
const MiB = 1 << 20;
const META = 3 * MiB;
const ITEMS = META + 64 * KiB;
const BAT = 2 * MiB;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vhdx-diff-')));
afterAll(() => t?.cleanup());

/** A parent locator item: VHDX type, then the pairs, then their UTF-16LE strings. */
function locator(pairs: [string, string][]): Uint8Array {
  const strings = pairs.flatMap(([k, v]) => [Buffer.from(k, 'utf16le'), Buffer.from(v, 'utf16le')]);
  const head = 20 + pairs.length * 12;
  const out = new Uint8Array(head + strings.reduce((n, s) => n + s.length, 0));
  const v = new DataView(out.buffer);
  out.set(PARENT_TYPE_VHDX_GUID, 0);
  v.setUint16(18, pairs.length, true);
  let at = head;
  pairs.forEach((_, i) => {
    const [k, val] = [strings[2 * i], strings[2 * i + 1]];
    v.setUint32(20 + i * 12, at, true);
    out.set(k, at);
    at += k.length;
    v.setUint32(20 + i * 12 + 4, at, true);
    out.set(val, at);
    at += val.length;
    v.setUint16(20 + i * 12 + 8, k.length, true);
    v.setUint16(20 + i * 12 + 10, val.length, true);
  });
  return out;
}

async function build(): Promise<{ child: string; model: Uint8Array }> {
  const parent = t.path('parent.vhdx');
  expect((await platter(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', parent, '4M'])).code).toBe(0);
  const p = await openImage(parent, { readOnly: false });
  const model = new Uint8Array(4 * MiB);
  for (let b = 0; b < 4; b++) model.fill(0x10 + b, b * MiB, (b + 1) * MiB);
  await p.write(model, 0);
  await p.close();

  const child = t.path('child.vhdx');
  expect((await platter(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', child, '4M'])).code).toBe(0);
  const old = readFileSync(child);
  const end = old.length;
  const f = new Uint8Array(end + 3 * MiB);
  f.set(old);
  const v = new DataView(f.buffer);
  v.setUint32(ITEMS + 4, 2, true); // file parameters: HasParent
  // Metadata entry 5: the parent locator, 4 KiB into the items.
  const loc = locator([
    ['parent_linkage', '{01234567-89ab-cdef-0123-456789abcdef}'],
    ['relative_path', '.\\parent.vhdx'],
    ['absolute_win32_path', 'C:\\elsewhere\\parent.vhdx'],
  ]);
  v.setUint16(META + 10, 6, true);
  f.set(PARENT_LOCATOR_GUID, META + 32 + 5 * 32);
  v.setUint32(META + 32 + 5 * 32 + 16, 64 * KiB + 4 * KiB, true);
  v.setUint32(META + 32 + 5 * 32 + 20, loc.length, true);
  v.setUint32(META + 32 + 5 * 32 + 24, 4, true);
  f.set(loc, ITEMS + 4 * KiB);
  // Blocks: 0 partially present (bitmap at `end`, data at end + 1 MiB), 1 not present, 2 zero, 3 fully present.
  const bat = (i: number, state: number, offset: number) => v.setBigUint64(BAT + i * 8, BigInt(offset) | BigInt(state), true);
  bat(0, 7, end + MiB);
  bat(1, 0, 0);
  bat(2, 2, 0);
  bat(3, 6, end + 2 * MiB);
  bat(4096, 6, end); // the sector bitmap of chunk 0 (chunk ratio 4096 for 1 MiB blocks of 512-byte sectors)
  f[end] = 0xff; // sectors 0..7 of block 0
  f[end + 1024 / 8] = 0xff; // sectors 1024..1031 (512 KiB in)
  f.fill(0xc0, end + MiB, end + 2 * MiB);
  f.fill(0xc3, end + 2 * MiB, end + 3 * MiB);
  writeFileSync(child, f);
  model.fill(0xc0, 0, 4 * KiB);
  model.fill(0xc0, 512 * KiB, 516 * KiB);
  model.fill(0, 2 * MiB, 3 * MiB);
  model.fill(0xc3, 3 * MiB, 4 * MiB);
  return { child, model };
}

describe('differencing VHDX', () => {
  it('reads through the parent named by the locator, per the BAT and sector bitmap', async () => {
    const { child, model } = await build();
    const img = await openImage(child);
    try {
      expect(img.layer.backingRef).toEqual({ filename: 'parent.vhdx', format: 'vhdx' });
      const buf = new Uint8Array(4 * MiB);
      await img.read(buf, 0);
      const bad = buf.findIndex((x, i) => x !== model[i]);
      expect(bad, `first difference at ${bad}: ${buf[bad]} for ${model[bad]}`).toBe(-1);
      // Unaligned reads across the runs.
      const part = new Uint8Array(5000);
      await img.read(part, 4096 - 300);
      expect(Buffer.compare(part, model.subarray(4096 - 300, 4096 - 300 + 5000))).toBe(0);
      // This layer's own status: its sectors, then the parent's.
      expect(await img.layer.blockStatus(0, 4 * MiB)).toMatchObject({ offset: 0, length: 4096, state: 'data' });
      expect(await img.layer.blockStatus(4096, 4 * MiB)).toMatchObject({ length: 512 * KiB - 4096, state: 'unallocated' });
      expect(await img.layer.blockStatus(MiB, 3 * MiB)).toMatchObject({ length: MiB, state: 'unallocated' });
      expect(await img.layer.blockStatus(2 * MiB, 2 * MiB)).toMatchObject({ length: MiB, state: 'zero' });
      expect(await img.layer.blockStatus(3 * MiB, MiB)).toMatchObject({ length: MiB, state: 'data' });
    } finally {
      await img.close();
    }
    const info = await platter(['info', child]);
    expect(info.stdout).toMatch(/backing file: parent\.vhdx/);
  });

  it('is refused for writing, with one sentence', async () => {
    const { child } = await build();
    const err = await rejection(openImage(child, { readOnly: false }));
    expect((err as Error).message).toMatch(/differencing images can only be opened read-only/);
  });
});
