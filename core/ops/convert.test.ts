/** convert's flags and the copy pipeline, checked against the bytes and holes they produce. */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, readdirSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PLATTER_BIN, platter } from '../test/cli.js';
import { hasTool, shStatus, tempDir } from '../test/tmp.js';
import type { Image } from '../image/image.js';
import { createImage, openImage } from '../image/open.js';
import { findDriver } from '../image/registry.js';
import { convert } from './convert.js';
import { copySpans, DEFAULT_COPY_OPTIONS } from './copy.js';
import { map } from './map.js';

const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
beforeEach(() => (t = tempDir()));
afterEach(() => t.cleanup());

/** 8 MiB: random data at 1 MiB, a run of written zeros at 3 MiB, random data at 6 MiB. */
function source(): string {
  const p = t.path('src.raw');
  const fd = openSync(p, 'w');
  ftruncateSync(fd, 8 * MiB);
  writeSync(fd, randomBytes(MiB), 0, MiB, MiB);
  writeSync(fd, Buffer.alloc(MiB), 0, MiB, 3 * MiB);
  writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, 6 * MiB);
  closeSync(fd);
  return p;
}

const dataRanges = async (p: string) =>
  (await map({ filename: p })).filter((e) => e.data).map((e) => [e.start, e.length]);

describe('convert', () => {
  it('turns written zeros into holes by default; -S 0 allocates every byte, holes included, as qemu-img does', async () => {
    const src = source();
    expect((await platter(['convert', src, t.path('sparse.raw')])).code).toBe(0);
    expect(await dataRanges(t.path('sparse.raw'))).toEqual([
      [MiB, MiB],
      [6 * MiB, 64 * 1024],
    ]);
    expect((await platter(['convert', '-S', '0', src, t.path('dense.raw')])).code).toBe(0);
    expect(await dataRanges(t.path('dense.raw'))).toEqual([[0, 8 * MiB]]);
    for (const out of ['sparse.raw', 'dense.raw']) {
      expect(readFileSync(t.path(out)).equals(readFileSync(src))).toBe(true);
    }
    // The zeros took no blocks either: map cannot tell a hole from blocks allocated and never written.
    expect(statSync(t.path('sparse.raw')).blocks * 512).toBeLessThan(MiB + 64 * 1024 + MiB / 2);
    expect(statSync(t.path('dense.raw')).blocks * 512).toBeGreaterThanOrEqual(8 * MiB);
  });

  it.skipIf(!HAS_QEMU)('-S 0 into qcow2: every cluster allocated, as qemu-img convert -S 0 leaves it', async () => {
    const src = source();
    const ours = t.path('dense.qcow2');
    const theirs = t.path('dense-qemu.qcow2');
    expect((await platter(['convert', '-S', '0', '-O', 'qcow2', src, ours])).code).toBe(0);
    expect(shStatus('qemu-img', ['convert', '-S', '0', '-O', 'qcow2', src, theirs]).status).toBe(0);
    const allocation = (p: string) => JSON.parse(shStatus('qemu-img', ['check', '--output=json', p]).stdout)['allocated-clusters'];
    expect(allocation(ours)).toBe(128);
    expect(allocation(ours)).toBe(allocation(theirs));
  });

  it.each([['-W'], ['-m', '1'], ['-m', '16', '-W']])('gives the same bytes with %s', async (...flags) => {
    const src = source();
    expect((await platter(['convert', ...flags, src, t.path('o.raw')])).code).toBe(0);
    expect(readFileSync(t.path('o.raw')).equals(readFileSync(src))).toBe(true);
  });

  it('-n writes into an existing image, zeroing what the source has as zeros', async () => {
    const src = source();
    const target = t.path('existing.raw');
    const fd = openSync(target, 'w');
    writeSync(fd, Buffer.alloc(10 * MiB, 0xee));
    closeSync(fd);
    expect((await platter(['convert', '-n', src, target])).code).toBe(0);
    const out = readFileSync(target);
    expect(out.subarray(0, 8 * MiB).equals(readFileSync(src))).toBe(true);
    // Past the source's end the target keeps its bytes.
    expect(out.subarray(8 * MiB).every((b) => b === 0xee)).toBe(true);
  });

  it('--target-is-zero skips zero ranges (so a non-zero target keeps its bytes there)', async () => {
    const src = source();
    const target = t.path('trusted.raw');
    const fd = openSync(target, 'w');
    writeSync(fd, Buffer.alloc(8 * MiB, 0xee));
    closeSync(fd);
    expect((await platter(['convert', '-n', '--target-is-zero', src, target])).code).toBe(0);
    const out = readFileSync(target);
    expect(out.subarray(MiB, 2 * MiB).equals(readFileSync(src).subarray(MiB, 2 * MiB))).toBe(true);
    expect(out.subarray(0, MiB).every((b) => b === 0xee)).toBe(true);
    const refused = await platter(['convert', '--target-is-zero', src, t.path('new.raw')]);
    expect(refused.stderr).toBe('platter: --target-is-zero only applies to an existing target (-n)\n');
  });

  it('-n refuses a target smaller than the source', async () => {
    const src = source();
    const small = t.path('small.raw');
    closeSync(openSync(small, 'w'));
    const r = await platter(['convert', '-n', src, small]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`platter: ${small}: target is too small: 0 bytes, ${8 * MiB} needed\n`);
  });

  it('--progress=json prints one JSON object per line, ending at 100%', async () => {
    const src = source();
    const r = await platter(['convert', '--progress=json', src, t.path('p.raw')]);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines[0]).toMatchObject({ done: 0, total: 8 * MiB });
    expect(lines[lines.length - 1]).toMatchObject({ done: 8 * MiB, total: 8 * MiB, percent: 100 });
    for (const l of lines) expect(Object.keys(l).sort()).toEqual(['bytesPerSecond', 'done', 'percent', 'secondsLeft', 'total']);
  });

  it('an aborted convert throws Cancelled and leaves nothing behind', async () => {
    const src = source();
    const ac = new AbortController();
    const err = await convert(
      { sources: [src], target: t.path('aborted.raw'), rateLimit: MiB },
      { signal: ac.signal, onProgress: (p) => p.done > 0 && ac.abort() },
    ).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'Cancelled' });
    expect(readdirSync(t.dir)).toEqual(['src.raw']);
  });

  it('rejects out-of-range tunables with one line', async () => {
    const src = source();
    expect((await platter(['convert', '-m', '17', src, t.path('x.raw')])).stderr).toBe(
      'platter: parallel requests must be between 1 and 16\n',
    );
    for (const bad of ['100', '17M']) {
      expect((await platter(['convert', '-S', bad, src, t.path('x.raw')])).stderr).toBe(
        'platter: the sparse size (-S) must be a multiple of 512 up to 16 MiB (0 allocates everything)\n',
      );
    }
    expect((await platter(['convert', '-S', '16M', src, t.path('x.raw')])).code).toBe(0);
    const compressed = await platter(['convert', '-c', '-O', 'qcow2', '-o', 'preallocation=metadata', src, t.path('x.qcow2')]);
    expect(compressed.stderr).toBe(`platter: ${t.path('x.qcow2')}: compression (-c) and preallocation cannot be used together\n`);
    expect(existsSync(t.path('x.qcow2'))).toBe(false);
  });

  it('writes a fully allocated target with -o preallocation=full', async () => {
    const src = source();
    expect((await platter(['convert', '-o', 'preallocation=full', src, t.path('full.raw')])).code).toBe(0);
    expect(statSync(t.path('full.raw')).blocks * 512).toBeGreaterThanOrEqual(8 * MiB);
    expect(readFileSync(t.path('full.raw')).equals(readFileSync(src))).toBe(true);
  });
});

describe('copying into a raw file', () => {
  /** Copies src.raw whole into `target`, logging the allocations and writes that reach the target's file. */
  async function copyLogged(target: Image, targetIsZero: boolean): Promise<string[]> {
    const log: string[] = [];
    const file = target.protocol;
    const [allocate, write] = [file.allocate!.bind(file), file.write.bind(file)];
    file.allocate = (offset, length) => (log.push(`allocate ${offset}+${length}`), allocate(offset, length));
    file.write = (buf, offset) => (log.push(`write ${offset}+${buf.length}`), write(buf, offset));
    const source = await openImage(t.path('src.raw'), { format: 'raw' });
    try {
      const span = { source, sourceOffset: 0, length: source.size, targetOffset: 0 };
      await copySpans([span], target, { ...DEFAULT_COPY_OPTIONS, targetIsZero }, {});
    } finally {
      await source.close();
    }
    return log;
  }

  it('allocates each run of data in a new file before writing it, and nothing for zeros', async () => {
    source();
    const created = await createImage(t.path('new.raw'), findDriver('raw'), 8 * MiB, {});
    try {
      const log = await copyLogged(created.image, true);
      const data = [`${MiB}+${MiB}`, `${6 * MiB}+${64 * 1024}`];
      expect(log.filter((l) => l.startsWith('allocate')).sort()).toEqual(data.map((r) => `allocate ${r}`).sort());
      for (const r of data) expect(log.indexOf(`allocate ${r}`)).toBeLessThan(log.indexOf(`write ${r}`));
      // Into a target that may hold data (-n), nothing is allocated.
      expect((await copyLogged(created.image, false)).filter((l) => l.startsWith('allocate'))).toEqual([]);
    } finally {
      await created.abort();
    }
  });
});

describe('convert -t', () => {
  const HAS_STRACE = hasTool('strace', 'apt-get install strace');

  /**
   * The successful calls to `syscalls` a command makes, counted by strace
   * (Node itself tries fsync on its stdio pipes at exit, which fails).
   */
  function calls(syscalls: string[], args: string[]): number {
    const r = shStatus('strace', ['-f', '-c', '-e', `trace=${syscalls.join(',')}`, process.execPath, PLATTER_BIN, ...args]);
    expect(r.status).toBe(0);
    const names = syscalls.join('|');
    const rows = [...r.stderr.matchAll(new RegExp(`^\\s*[\\d.]+\\s+[\\d.]+\\s+\\d+\\s+(\\d+)\\s+(\\d+\\s+)?(${names})$`, 'gm'))];
    return rows.reduce((n, m) => n + Number(m[1]) - Number(m[2] ?? 0), 0);
  }
  const syncCalls = (args: string[]) => calls(['fsync', 'fdatasync'], args);

  it.skipIf(!HAS_STRACE)('writeback (the default) fsyncs the target; unsafe does not', () => {
    const src = source();
    expect(syncCalls(['convert', src, t.path('durable.raw')])).toBeGreaterThan(0);
    expect(syncCalls(['convert', '-t', 'unsafe', src, t.path('fast.raw')])).toBe(0);
    expect(readFileSync(t.path('fast.raw')).equals(readFileSync(src))).toBe(true);
  });

  it.skipIf(!HAS_STRACE)('writeback starts writing a long copy early; unsafe leaves it to the page cache', () => {
    const big = t.path('big.raw');
    writeFileSync(big, randomBytes(40 * MiB));
    expect(calls(['sync_file_range'], ['convert', big, t.path('early.raw')])).toBeGreaterThan(0);
    expect(calls(['sync_file_range'], ['convert', '-t', 'unsafe', big, t.path('late.raw')])).toBe(0);
  });

  it('refuses other cache modes, naming the allowed ones', async () => {
    const r = await platter(['convert', '-t', 'none', source(), t.path('x.raw')]);
    expect(r.stderr).toBe("platter: invalid cache mode 'none' (allowed values: writeback, unsafe)\n");
  });

  it('-o help lists the target format\'s options, as create -o help does, and copies nothing', async () => {
    const help = await platter(['convert', '-O', 'qcow2', '-o', 'help', source(), t.path('x.qcow2')]);
    expect(help).toMatchObject({ code: 0, stdout: (await platter(['create', '-f', 'qcow2', '-o', 'help'])).stdout });
    expect(help.stdout).toMatch(/^Supported options:\n[^]*cluster_size=<size>/);
    expect(existsSync(t.path('x.qcow2'))).toBe(false);
    expect((await platter(['convert', '-o', '?'])).stdout).toBe((await platter(['create', '-o', 'help'])).stdout);
  });

  it('takes qemu-img\'s -T (the sources\' cache mode) in convert, compare and check', async () => {
    const src = source();
    expect(await platter(['convert', '-T', 'unsafe', src, t.path('x.raw')])).toMatchObject({ code: 0, stderr: '' });
    expect((await platter(['compare', '-T', 'writeback', src, t.path('x.raw')])).code).toBe(0);
    expect((await platter(['check', '-T', 'writeback', src])).stderr).toBe(`platter: ${src}: raw images have no metadata to check\n`);
    const r = await platter(['compare', '-T', 'none', src, t.path('x.raw')]);
    expect(r).toMatchObject({ code: 2, stderr: "platter: invalid cache mode 'none' (allowed values: writeback, unsafe)\n" });
  });
});
