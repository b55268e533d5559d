import { spawnSync } from 'node:child_process';
import {
  closeSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockError } from '../image/errors.js';
import { PLATTER_BIN, platterProcess } from '../test/cli.js';
import { hasTool, tempDir, withSmallDiskAsync } from '../test/tmp.js';
import { FileProtocol } from './file.js';

const MiB = 1 << 20;
const hasStrace = hasTool('strace', 'apt-get install strace');
let t: ReturnType<typeof tempDir>;
beforeEach(() => (t = tempDir()));
afterEach(() => t.cleanup());

/** A sparse file: data at [1 MiB, 1.5 MiB) and [3 MiB, 3 MiB + 4 KiB), 4 MiB long. */
function sparseFile(path: string): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, 4 * MiB);
  writeSync(fd, Buffer.alloc(MiB / 2, 0xab), 0, MiB / 2, MiB);
  writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 3 * MiB);
  closeSync(fd);
}

describe('FileProtocol', () => {
  it('reads what was written, and zeros past the end of the file', async () => {
    const p = await FileProtocol.open(t.path('a'), { readOnly: false, create: true });
    await p.write(Uint8Array.from([1, 2, 3, 4]), 10);
    const buf = new Uint8Array(8).fill(0xff);
    await p.read(buf, 10);
    expect([...buf]).toEqual([1, 2, 3, 4, 0, 0, 0, 0]);
    expect(await p.size()).toBe(14);
    await p.close();
  });

  it('finds holes and data with SEEK_DATA/SEEK_HOLE', async () => {
    sparseFile(t.path('s'));
    const p = await FileProtocol.open(t.path('s'), { readOnly: true });
    const extents = [];
    for (let at = 0; at < 4 * MiB; ) {
      const e = await p.blockStatus(at, 4 * MiB - at);
      extents.push([e.offset, e.length, e.data]);
      at += e.length;
    }
    expect(extents).toEqual([
      [0, MiB, false],
      [MiB, MiB / 2, true],
      [1.5 * MiB, 1.5 * MiB, false],
      [3 * MiB, 4096, true],
      [3 * MiB + 4096, MiB - 4096, false],
    ]);
    await p.close();
  });

  it('treats everything as data when the FFI is unavailable', () => {
    sparseFile(t.path('s'));
    const r = platterProcess(['map', '--output=json', t.path('s')], { env: { PLATTER_NO_FFI: '1' } });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([
      { start: 0, length: 4 * MiB, depth: 0, present: true, zero: false, data: true, offset: 0 },
    ]);
  });

  it('punches holes on discard and zero writes, freeing space', async () => {
    const path = t.path('z');
    writeFileSync(path, Buffer.alloc(2 * MiB, 7));
    const p = await FileProtocol.open(path, { readOnly: false });
    const before = (await p.allocatedSize())!;
    await p.discard(0, MiB);
    await p.writeZeroes(MiB, MiB / 2, true);
    const buf = new Uint8Array(1.5 * MiB);
    await p.read(buf, 0);
    expect(buf.every((b) => b === 0)).toBe(true);
    expect((await p.allocatedSize())!).toBeLessThanOrEqual(before - 1.5 * MiB);
    // Without unmap the range still reads zero, and stays allocated.
    await p.writeZeroes(1.5 * MiB, 4096, false);
    const tail = new Uint8Array(8192);
    await p.read(tail, 1.5 * MiB);
    expect(tail.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(tail.subarray(4096).every((b) => b === 7)).toBe(true);
    expect(await p.size()).toBe(2 * MiB);
    await p.close();
  });

  it('allocates ahead of writes without changing the length; discard frees it, past the end too', async () => {
    const path = t.path('a');
    const p = await FileProtocol.open(path, { readOnly: false, create: true });
    await p.allocate(0, 8 * MiB);
    expect(await p.size()).toBe(0);
    expect(statSync(path).size).toBe(0);
    expect(statSync(path).blocks * 512).toBeGreaterThanOrEqual(8 * MiB);
    await p.write(Buffer.alloc(MiB, 5), 0);
    const back = new Uint8Array(2 * MiB);
    await p.read(back, 0);
    expect(back.subarray(0, MiB).every((b) => b === 5)).toBe(true);
    expect(back.subarray(MiB).every((b) => b === 0)).toBe(true);
    expect(statSync(path).size).toBe(MiB);
    await p.discard(0, MiB / 2);
    await p.discard(MiB, 7 * MiB);
    await p.freePastEnd();
    expect(statSync(path).size).toBe(MiB);
    expect(statSync(path).blocks * 512).toBeLessThanOrEqual(MiB / 2 + 64 * 1024);
    await p.close();
  });

  it('allocates nothing ahead on a nearly full disk: plain writes take only what they fill', async () => {
    await withSmallDiskAsync(t.path('small'), '64m', 'allocating ahead on a nearly full disk', async () => {
      const path = t.path('small/a');
      const p = await FileProtocol.open(path, { readOnly: false, create: true });
      await p.allocate(0, 8 * MiB);
      expect(statSync(path).blocks).toBe(0);
      await p.close();
    });
  });

  it.each([
    ['off', 0],
    ['falloc', 8 * MiB],
    ['full', 8 * MiB],
  ] as const)('grows with preallocation=%s', async (mode, allocated) => {
    const p = await FileProtocol.open(t.path('g'), { readOnly: false, create: true });
    await p.truncate(8 * MiB, mode);
    expect(await p.size()).toBe(8 * MiB);
    expect(statSync(t.path('g')).blocks * 512).toBeGreaterThanOrEqual(allocated);
    if (mode === 'off') expect(statSync(t.path('g')).blocks).toBe(0);
    await p.close();
  });

  it('refuses writes when read-only, and directories', async () => {
    writeFileSync(t.path('r'), 'x');
    const p = await FileProtocol.open(t.path('r'), { readOnly: true });
    await expect(p.write(new Uint8Array(1), 0)).rejects.toMatchObject({ kind: 'InvalidArgument' });
    await p.close();
    const err = await FileProtocol.open(t.dir, { readOnly: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).message).toBe('is a directory, not an image file');
  });

  it('creating refuses to overwrite an existing file', async () => {
    writeFileSync(t.path('e'), 'x');
    await expect(FileProtocol.open(t.path('e'), { readOnly: false, create: true })).rejects.toMatchObject({
      kind: 'InvalidArgument',
      message: 'file already exists',
    });
  });

  it.skipIf(!hasStrace)('never writes more than 1 MiB in one call (never a whole aligned 2 MiB: MAX_WRITE)', () => {
    const src = t.path('data.raw');
    const content = Buffer.alloc(6 * MiB);
    for (let i = 0; i < content.length; i += 4096) content[i] = (i / 4096) % 251 || 1;
    writeFileSync(src, content);
    const out = t.path('out.raw');
    const trace = t.path('trace');
    // The in-process pipeline, whose chunks are 2 MiB and aligned: each would be one call.
    // -ff: a file per thread, so no call is split across lines.
    const convert = [PLATTER_BIN, 'convert', '-f', 'raw', '-O', 'raw', src, out];
    const r = spawnSync('strace', ['-ff', '-e', 'trace=pwrite64', '-o', trace, process.execPath, ...convert], {
      env: { ...process.env, PLATTER_COPY_THREADS: '1' },
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(out).equals(content)).toBe(true);
    const traced = readdirSync(t.dir).filter((n) => n.startsWith('trace.')).map((n) => readFileSync(t.path(n), 'utf8'));
    const sizes = [...traced.join('\n').matchAll(/pwrite64\(\d+, .*, (\d+), \d+\) = \d+/g)].map((m) => Number(m[1]));
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(content.length);
    expect(Math.max(...sizes)).toBe(MiB);
  });
});
