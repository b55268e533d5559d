/**
 * Copies on worker threads, mostly into raw files (placed-copy.test.ts has
 * new qcow2, VHD and VHDX images; the cancel test here covers all four). The threads run the built worker script (dist/, which
 * `npm test` builds first), so most tests go through the built CLI;
 * PLATTER_COPY_THREADS picks the thread count, 1 being the in-process
 * pipeline to compare with.
 */
import {
  closeSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { BlockError } from '../image/errors.js';
import { createImage, openImage } from '../image/open.js';
import { createOptionsOf, findDriver } from '../image/registry.js';
import { resolveOptions } from '../options/schema.js';
import { platterProcess } from '../test/cli.js';
import { makeMixedRaw } from '../test/images.js';
import { prng } from '../test/prng.js';
import { qemuCompare } from '../test/qemu.js';
import { hasTool, sh, tempDir, withSmallDisk } from '../test/tmp.js';
import { copyInWorkers, startCopyThreadsAhead } from './copy-workers.js';
import { DEFAULT_COPY_OPTIONS } from './copy.js';

const MiB = 1 << 20;
/** Above copy-workers' MIN_BYTES, so the CLI copies on threads. */
const SIZE = 96 * MiB;
const SCRIPT = new URL('../../dist/copy-worker.cjs', import.meta.url);
const hasQemu = hasTool('qemu-img', 'apt-get install qemu-utils');

const t = tempDir();
afterAll(() => t.cleanup());

const allocated = (p: string) => statSync(p).blocks * 512;

/** A qcow2 image whose L2 entry for guest offset 70 MiB has a reserved bit set: reading there fails. */
function makeBadQcow2(name: string): string {
  const src = t.path(name);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', src, String(SIZE)]);
  sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 0 64k', '-c', 'write -P 0x66 70M 64k', src]);
  // Set a reserved bit in the L2 entry of guest cluster 70M / 64K.
  const file = readFileSync(src);
  const l1 = Number(file.readBigUInt64BE(40));
  const l2 = Number(file.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const at = l2 + ((70 * MiB) / 65536) * 8;
  const fd = openSync(src, 'r+');
  const entry = Buffer.alloc(8);
  entry.writeBigUInt64BE(file.readBigUInt64BE(at) | 0x2n);
  writeSync(fd, entry, 0, 8, at);
  closeSync(fd);
  return src;
}

describe('copy on worker threads', () => {
  it('the worker script is built', () => {
    expect(existsSync(SCRIPT), `${fileURLToPath(SCRIPT)} missing: run npm run build`).toBe(true);
  });

  it('raw -> raw: byte for byte, written zeros and holes left as holes, like the in-process copy', () => {
    const src = t.path('mixed.raw');
    const content = makeMixedRaw(src, SIZE, prng(7), { zeroRun: 3 * MiB });
    for (const threads of ['1', '2', '3']) {
      const out = t.path(`out-${threads}.raw`);
      const r = platterProcess(['convert', '-f', 'raw', '-O', 'raw', src, out], {
        env: { PLATTER_COPY_THREADS: threads },
      });
      expect(r, `threads=${threads}`).toMatchObject({ code: 0, stderr: '' });
      expect(Buffer.compare(readFileSync(out), content), `threads=${threads}`).toBe(0);
    }
    // The 3 MiB of written zeros became a hole on every path.
    expect(allocated(t.path('out-2.raw'))).toBe(allocated(t.path('out-1.raw')));
    expect(allocated(t.path('out-3.raw'))).toBe(allocated(t.path('out-1.raw')));
    expect(allocated(t.path('out-2.raw'))).toBeLessThan(allocated(src) - 2 * MiB);
  });

  it.skipIf(!hasQemu)('qcow2 with a backing file -> raw: equal to the source per qemu-img', () => {
    const base = t.path('base.qcow2');
    const top = t.path('top.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(SIZE)]);
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 1M 20M', '-c', 'write -P 0x22 90M 5M', base]);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top]);
    const writes = ['write -P 0x33 10M 3M', 'write -z 15M 1M', 'write -P 0x44 60M 64k'];
    sh('qemu-io', ['-f', 'qcow2', ...writes.flatMap((w) => ['-c', w]), top]);
    const out = t.path('top.raw');
    const r = platterProcess(['convert', '-f', 'qcow2', '-O', 'raw', top, out], { env: { PLATTER_COPY_THREADS: '2' } });
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(qemuCompare(top, out)).toMatch(/identical/);
  });

  it.skipIf(!hasQemu)('a compressed qcow2 -> raw: every thread inflates clusters', () => {
    // Compressible: qemu-img stores a cluster compressed only when that saves space.
    const content = new Uint8Array(SIZE);
    const rng = prng(11);
    for (let at = 0; at < SIZE; at += MiB) {
      content.fill(1 + ((at / MiB) % 250), at, at + 600 * 1024);
      content.set(rng.bytes(512), at + 4096);
    }
    const raw = t.write('compressible.raw', content);
    const src = t.path('compressed.qcow2');
    sh('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, src]);
    const out = t.path('from-compressed.raw');
    const r = platterProcess(['convert', '-f', 'qcow2', '-O', 'raw', src, out], { env: { PLATTER_COPY_THREADS: '2' } });
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(Buffer.compare(readFileSync(out), content)).toBe(0);
  });

  it.skipIf(!hasQemu)('convert -l: an internal snapshot, reopened by every thread, equals qemu-img\'s export', () => {
    const src = t.path('snap.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', src, String(SIZE)]);
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x71 2M 30M', '-c', 'write -P 0x72 80M 10M', src]);
    sh('qemu-img', ['snapshot', '-c', 'before', src]);
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x73 0 90M', src]);
    const ours = t.path('snap-ours.raw');
    const theirs = t.path('snap-theirs.raw');
    const r = platterProcess(['convert', '-l', 'snapshot.name=before', '-f', 'qcow2', '-O', 'raw', src, ours], {
      env: { PLATTER_COPY_THREADS: '2' },
    });
    expect(r).toMatchObject({ code: 0, stderr: '' });
    sh('qemu-img', ['convert', '-l', 'snapshot.name=before', '-f', 'qcow2', '-O', 'raw', src, theirs]);
    expect(Buffer.compare(readFileSync(ours), readFileSync(theirs))).toBe(0);
  });

  it('dd with skip and count: the bytes coreutils dd would copy', () => {
    const src = t.path('dd-src.raw');
    const content = makeMixedRaw(src, SIZE, prng(12));
    const out = t.path('dd-out.raw');
    const dd = ['dd', '-f', 'raw', '-O', 'raw', 'bs=1M', 'skip=3', 'count=80', `if=${src}`, `of=${out}`];
    const r = platterProcess(dd, {
      env: { PLATTER_COPY_THREADS: '3' },
    });
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(Buffer.compare(readFileSync(out), Buffer.from(content.subarray(3 * MiB, 83 * MiB)))).toBe(0);
  });

  it('-n into an existing raw file overwrites its old bytes, zeros included', () => {
    const src = t.path('mixed-n.raw');
    const content = makeMixedRaw(src, SIZE, prng(8));
    const out = t.path('dirty.raw');
    writeFileSync(out, Buffer.alloc(SIZE, 0xee));
    const r = platterProcess(['convert', '-n', '-f', 'raw', '-O', 'raw', src, out], {
      env: { PLATTER_COPY_THREADS: '2' },
    });
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(Buffer.compare(readFileSync(out), content)).toBe(0);
  });

  it.skipIf(!hasQemu)("a thread's error ends the convert as one line, and no target is left", () => {
    const src = makeBadQcow2('bad.qcow2');
    const r = platterProcess(['convert', '-f', 'qcow2', '-O', 'raw', src, t.path('bad.raw')], {
      env: { PLATTER_COPY_THREADS: '2' },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^platter: ${src}: .*reserved bits are set\\n$`));
    expect(readdirSync(t.dir).filter((n) => n.includes('bad.raw'))).toEqual([]);
  });

  it.skipIf(!hasQemu)('runs on threads when called directly, and a thread\'s BlockError arrives whole', async () => {
    const src = t.path('direct.raw');
    const content = makeMixedRaw(src, SIZE, prng(10));
    const source = await openImage(src, { format: 'raw' });
    const created = await createImage(t.path('direct-out.raw'), findDriver('raw'), SIZE, {});
    try {
      const spans = [{ source, sourceOffset: 0, length: SIZE, targetOffset: 0 }];
      const opts = { ...DEFAULT_COPY_OPTIONS, targetIsZero: true };
      expect(await copyInWorkers(spans, created.image, opts, {}, SCRIPT)).toBe(true);
      expect(Buffer.compare(readFileSync(created.image.openedAs!.filename), content)).toBe(0);
      const badPath = makeBadQcow2('bad-direct.qcow2');
      const bad = await openImage(badPath, { format: 'qcow2' });
      try {
        const badSpans = [{ ...spans[0], source: bad }];
        const err = await copyInWorkers(badSpans, created.image, opts, {}, SCRIPT).catch((e) => e);
        expect(err).toBeInstanceOf(BlockError);
        expect(err).toMatchObject({ kind: 'Corrupt', context: { path: badPath } });
      } finally {
        await bad.close();
      }
    } finally {
      await created.abort();
      await source.close();
    }
  });

  it('a full disk under the threads: one line, and nothing left on the disk', () => {
    const mnt = t.path('small');
    withSmallDisk(mnt, '8m', 'threaded full-disk test', () => {
      const src = t.path('full.raw');
      makeMixedRaw(src, SIZE, prng(11), { zeroRun: 0 });
      writeFileSync(src, Buffer.alloc(16 * MiB, 0x33), { flag: 'r+' });
      const r = platterProcess(['convert', '-f', 'raw', '-O', 'raw', src, `${mnt}/out.raw`], {
        env: { PLATTER_COPY_THREADS: '2' },
      });
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`platter: ${mnt}/out.raw: no space left on device\n`);
      expect(readdirSync(mnt)).toEqual([]);
    });
  });

  it('a thread that cannot start is reported as an error, never ignored', async () => {
    const src = t.path('nothread.raw');
    makeMixedRaw(src, SIZE, prng(13));
    const source = await openImage(src, { format: 'raw' });
    const created = await createImage(t.path('nothread-out.raw'), findDriver('raw'), SIZE, {});
    try {
      const copy = copyInWorkers(
        [{ source, sourceOffset: 0, length: SIZE, targetOffset: 0 }],
        created.image,
        { ...DEFAULT_COPY_OPTIONS, targetIsZero: true },
        {},
        new URL('./no-such-copy-worker.cjs', SCRIPT),
      );
      await expect(copy).rejects.toBeInstanceOf(BlockError);
    } finally {
      await created.abort();
      await source.close();
    }
  });

  describe('threads started ahead of the copy', () => {
    /** A script that does not exist: only a thread started ahead can copy, any other fails to start. */
    const MISSING = new URL('./no-such-copy-worker.cjs', SCRIPT);

    /** Copies a mixed raw image into a new raw one on threads, new ones started from `script`: whether the copy is the source's bytes. */
    async function copyWith(name: string, script: URL): Promise<boolean> {
      const src = t.path(`${name}.raw`);
      const content = makeMixedRaw(src, SIZE, prng(17));
      const source = await openImage(src, { format: 'raw' });
      const created = await createImage(t.path(`${name}-out.raw`), findDriver('raw'), SIZE, {});
      try {
        const spans = [{ source, sourceOffset: 0, length: SIZE, targetOffset: 0 }];
        const threaded = await copyInWorkers(spans, created.image, { ...DEFAULT_COPY_OPTIONS, targetIsZero: true }, {}, script);
        const out = Buffer.alloc(SIZE);
        await created.image.read(out, 0);
        return threaded && out.equals(content);
      } finally {
        await created.abort();
        await source.close();
      }
    }

    afterEach(() => vi.unstubAllEnvs());

    it('a copy takes them, once each, and says when they have loaded', async () => {
      vi.stubEnv('PLATTER_COPY_THREADS', '3');
      let loaded = 0;
      await startCopyThreadsAhead(SIZE, () => loaded++, SCRIPT);
      expect(loaded).toBe(1);
      await expect(copyWith('ahead', MISSING)).resolves.toBe(true);
      // Both were taken: the next copy has to start its own.
      await expect(copyWith('ahead-again', MISSING)).rejects.toBeInstanceOf(BlockError);
    });

    it('none start for a copy too small for threads', async () => {
      vi.stubEnv('PLATTER_COPY_THREADS', '2');
      let loaded = 0;
      await startCopyThreadsAhead(SIZE / 4, () => loaded++, SCRIPT);
      expect(loaded).toBe(1);
      await expect(copyWith('small', MISSING)).rejects.toBeInstanceOf(BlockError);
    });
  });

  it.each(['raw', 'qcow2', 'vpc', 'vhdx'])('a cancel stops every thread, and the copy returns only then (into %s)', async (format) => {
    const src = t.path(`cancel-${format}.raw`);
    makeMixedRaw(src, SIZE, prng(9));
    const source = await openImage(src, { format: 'raw' });
    const driver = findDriver(format);
    const created = await createImage(t.path(`cancel-out.${format}`), driver, SIZE, resolveOptions(createOptionsOf(driver), {}, format));
    const controller = new AbortController();
    try {
      const copy = copyInWorkers(
        [{ source, sourceOffset: 0, length: SIZE, targetOffset: 0 }],
        created.image,
        { ...DEFAULT_COPY_OPTIONS, targetIsZero: true },
        { signal: controller.signal, onProgress: () => controller.abort() },
        SCRIPT,
      );
      await expect(copy).rejects.toThrow(new BlockError('Cancelled', 'cancelled'));
      // Cancelled at the first progress report, before any chunk: no thread wrote a byte.
      expect(await created.image.blockStatus(0, SIZE)).toMatchObject({ length: SIZE, data: false });
    } finally {
      await created.abort();
      await source.close();
    }
  });
});
