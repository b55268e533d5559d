/**
 * Platter's qcow2 driver against qemu-img and qemu-io (7.2), both ways:
 * images Platter makes must check clean and read identically in QEMU, images
 * QEMU makes must read identically in Platter (content, map, chains,
 * compressed clusters), and measure / resize must agree with qemu-img.
 */
import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isResizable } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { prng, type Rng } from '../../test/prng.js';
import { CLEAN, problems, qemuCheck, qemuIo } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const KiB = 1024;
const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-qcow2-interop-')));
afterAll(() => t?.cleanup());

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
const sha256File = (path: string) => sha256(readFileSync(path));

/**
 * A sparse raw file of `size` bytes: random data at unaligned places, runs of
 * written zeros (allocated in the file, so convert must detect them), holes,
 * and data in the first and last bytes. Returns its content.
 */
function makeRaw(path: string, size: number, rng: Rng, opts: { pieces?: number; compressible?: boolean } = {}): Uint8Array {
  const content = new Uint8Array(size);
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    const put = (off: number, data: Uint8Array) => {
      content.set(data, off);
      writeSync(fd, data, 0, data.length, off);
    };
    const data = (len: number) => {
      if (!opts.compressible) return rng.bytes(len);
      // Short random words repeated: deflate shrinks it, but not to nothing.
      const word = rng.bytes(rng.int(3, 40));
      const out = new Uint8Array(len);
      for (let i = 0; i < len; i++) out[i] = i % 97 === 0 ? rng.int(0, 256) : word[i % word.length];
      return out;
    };
    for (let i = 0; i < (opts.pieces ?? 30); i++) {
      const len = rng.int(1, 200 * KiB);
      const off = rng.int(0, size - len);
      put(off, data(len));
    }
    for (let i = 0; i < 8; i++) {
      const len = rng.next() < 0.5 ? rng.int(1, 300 * KiB) : rng.int(1, 64) * 4096;
      const off = rng.next() < 0.5 ? rng.int(0, (size - len) / 4096) * 4096 : rng.int(0, size - len);
      put(off, new Uint8Array(len));
    }
    put(0, data(3000));
    put(size - 1000, data(1000));
  } finally {
    closeSync(fd);
  }
  return content;
}

/** qemu-img map --output=json without host offsets, adjacent equal runs merged: where data is, not where it is stored. */
function layout(mapJson: string) {
  const out: { start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean }[] = [];
  for (const e of JSON.parse(mapJson) as { start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean }[]) {
    const last = out[out.length - 1];
    const { start, length, depth, present, zero, data } = e;
    if (last && last.depth === depth && last.present === present && last.zero === zero && last.data === data) last.length += length;
    else out.push({ start, length, depth, present, zero, data });
  }
  return out;
}

/** Seeded qemu-io writes, zero writes (with and without unmap) and discards, aligned and not. */
function randomQemuIoOps(rng: Rng, size: number, cs: number, n = 16): string[] {
  const cmds: string[] = [];
  for (let i = 0; i < n; i++) {
    const off = rng.next() < 0.3 ? rng.int(0, Math.floor(size / cs)) * cs : rng.int(0, size - 1);
    const len = Math.min(size - off, rng.next() < 0.3 ? rng.int(1, 4) * cs : rng.int(1, 3 * cs + 70_000));
    const r = rng.next();
    if (r < 0.55) cmds.push(`write -P 0x${rng.int(1, 256).toString(16)} ${off} ${len}`);
    else if (r < 0.8) cmds.push(`write -z ${rng.next() < 0.5 ? '-u ' : ''}${off} ${len}`);
    else cmds.push(`discard ${off} ${len}`);
  }
  return cmds;
}

/** What qemu reads: the image converted to raw by qemu-img. */
function qemuRaw(path: string): Uint8Array {
  const out = `${path}.qemu.raw`;
  sh('qemu-img', ['convert', '-O', 'raw', path, out]);
  return readFileSync(out);
}

/** Platter's hash, map (json and human) of `path` equal qemu's reading of it. */
async function expectSameReading(path: string) {
  const expected = sha256(qemuRaw(path));
  const hash = await platter(['hash', path]);
  expect(hash.stderr).toBe('');
  expect(hash.stdout).toBe(`${expected}  ${path}\n`);
  const map = await platter(['map', '--output=json', path]);
  expect(map.stderr).toBe('');
  expect(map.stdout).toBe(sh('qemu-img', ['map', '--output=json', path]));
  return map.stdout;
}

/**
 * Random reads through the Image API, unaligned and of any length, into
 * buffers that are not zeroed, must give the bytes qemu reads.
 */
async function expectRandomReads(path: string, expected: Uint8Array, seed: number, maxLen: number) {
  const rng = prng(seed);
  const image = await openImage(path);
  try {
    expect(image.size).toBe(expected.length);
    for (let i = 0; i < 80; i++) {
      const off = rng.int(0, expected.length);
      const buf = new Uint8Array(Math.min(expected.length - off, rng.int(1, maxLen))).fill(0xa5);
      await image.read(buf, off);
      if (sha256(buf) !== sha256(expected.subarray(off, off + buf.length))) {
        expect.fail(`read ${off}+${buf.length} of ${path} differs from what qemu reads`);
      }
    }
  } finally {
    await image.close();
  }
}

/** qemu-img compare's verdict: Platter wrote what it was given. */
function expectIdentical(raw: string, image: string) {
  const r = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, image]);
  expect(r.stdout + r.stderr).toBe('Images are identical.\n');
  expect(r.status).toBe(0);
}

function expectClean(image: string) {
  const c = qemuCheck(image);
  expect(problems(c), c.text).toEqual(CLEAN);
  return c;
}

function qemuInfo(image: string) {
  return JSON.parse(sh('qemu-img', ['info', '--output=json', image])) as Record<string, unknown> & {
    'format-specific': { type: string; data: Record<string, unknown> };
  };
}

/** The header fields qemu-img info reports that the create options set. */
function expectInfo(
  image: string,
  want: { size: number; clusterSize: number; compat: string; refcountBits: number; lazy: boolean; extendedL2?: boolean },
) {
  const info = qemuInfo(image);
  expect({
    format: info.format,
    size: info['virtual-size'],
    clusterSize: info['cluster-size'],
    dirty: info['dirty-flag'],
    ...info['format-specific'].data,
  }).toEqual({
    format: 'qcow2',
    size: want.size,
    clusterSize: want.clusterSize,
    dirty: false,
    compat: want.compat,
    'compression-type': 'zlib',
    'refcount-bits': want.refcountBits,
    // Version 3 only:
    ...(want.compat === '1.1' ? { 'lazy-refcounts': want.lazy, corrupt: false, 'extended-l2': want.extendedL2 ?? false } : {}),
  });
}

const SIZES: Record<string, number> = { '512': 512, '4K': 4096, '64K': 65536, '2M': 2 * MiB };

describe.skipIf(!HAS_QEMU)('qcow2 interop with qemu-img and qemu-io', () => {
  /** 12 MiB less 3.5 KiB: a partial last cluster for every cluster size above 512. */
  const SRC_SIZE = 12 * MiB - 3584;
  let src: string;
  let srcHash: string;
  /** Compressible data, for convert -c. */
  let textSrc: string;
  let textHash: string;
  /** A base with other data, under the images made with a backing file. */
  let base: string;
  beforeAll(() => {
    src = t.path('src.raw');
    srcHash = sha256(makeRaw(src, SRC_SIZE, prng(42)));
    textSrc = t.path('text-src.raw');
    textHash = sha256(makeRaw(textSrc, SRC_SIZE, prng(43), { compressible: true }));
    base = t.path('matrix-base.raw');
    makeRaw(base, SRC_SIZE, prng(44));
  });

  describe('images Platter creates and fills check clean and read identically in qemu', () => {
    type Combo = {
      compat: '0.10' | '1.1';
      cs: string;
      rb: number;
      pre: 'off' | 'metadata' | 'falloc' | 'full';
      lazy: boolean;
      xl2?: boolean;
      /** Filled with convert -c (compressible data). */
      comp?: boolean;
      /** Made over a backing file (-b), whose data the fill must hide. */
      backing?: boolean;
    };
    /*
     * A subset of compat {0.10, 1.1} x cluster_size {512, 4K, 64K, 2M} x
     * refcount_bits {1, 16, 64} x preallocation {off, metadata, falloc, full}
     * x lazy_refcounts {off, on}: every value of every axis, every cluster
     * size with both compat levels and with metadata preallocation, every
     * refcount width with 512-byte and 2M clusters (the extremes: 512/1 counts
     * 4096 clusters per refcount block, 512/64 only 64 so the refcount table
     * must move), falloc and full on a few. refcount_bits other than 16 with
     * compat=0.10 is refused (next test); lazy_refcounts needs compat=1.1.
     * extended_l2 where qemu-img allows it (compat=1.1, clusters of at least
     * 16 KiB), with every preallocation mode. Compressed fills and backing
     * files across both compat levels, every cluster size and refcount width
     * (a backing file with preallocation needs extended_l2, as in qemu-img).
     */
    const MATRIX: Combo[] = [
      { compat: '1.1', cs: '512', rb: 1, pre: 'off', lazy: false },
      { compat: '1.1', cs: '512', rb: 64, pre: 'off', lazy: true },
      { compat: '1.1', cs: '512', rb: 16, pre: 'metadata', lazy: false },
      { compat: '1.1', cs: '512', rb: 64, pre: 'metadata', lazy: false },
      { compat: '0.10', cs: '512', rb: 16, pre: 'off', lazy: false },
      { compat: '0.10', cs: '512', rb: 16, pre: 'metadata', lazy: false },
      { compat: '1.1', cs: '4K', rb: 1, pre: 'metadata', lazy: true },
      { compat: '1.1', cs: '4K', rb: 64, pre: 'falloc', lazy: false },
      { compat: '0.10', cs: '4K', rb: 16, pre: 'off', lazy: false },
      { compat: '1.1', cs: '64K', rb: 16, pre: 'off', lazy: false },
      { compat: '1.1', cs: '64K', rb: 1, pre: 'full', lazy: true },
      { compat: '1.1', cs: '64K', rb: 64, pre: 'metadata', lazy: false },
      { compat: '0.10', cs: '64K', rb: 16, pre: 'metadata', lazy: false },
      { compat: '0.10', cs: '64K', rb: 16, pre: 'falloc', lazy: false },
      { compat: '1.1', cs: '2M', rb: 1, pre: 'off', lazy: false },
      { compat: '1.1', cs: '2M', rb: 16, pre: 'metadata', lazy: true },
      { compat: '1.1', cs: '2M', rb: 64, pre: 'full', lazy: false },
      { compat: '0.10', cs: '2M', rb: 16, pre: 'off', lazy: false },
      { compat: '1.1', cs: '64K', rb: 16, pre: 'off', lazy: false, xl2: true },
      { compat: '1.1', cs: '64K', rb: 1, pre: 'metadata', lazy: true, xl2: true },
      { compat: '1.1', cs: '2M', rb: 64, pre: 'falloc', lazy: false, xl2: true },
      { compat: '1.1', cs: '2M', rb: 16, pre: 'full', lazy: false, xl2: true },
      { compat: '1.1', cs: '512', rb: 16, pre: 'off', lazy: false, comp: true },
      { compat: '0.10', cs: '64K', rb: 16, pre: 'off', lazy: false, comp: true },
      { compat: '1.1', cs: '4K', rb: 64, pre: 'metadata', lazy: true, comp: true },
      { compat: '1.1', cs: '2M', rb: 64, pre: 'off', lazy: false, xl2: true, comp: true },
      { compat: '1.1', cs: '512', rb: 1, pre: 'off', lazy: true, backing: true },
      { compat: '0.10', cs: '4K', rb: 16, pre: 'off', lazy: false, backing: true },
      { compat: '1.1', cs: '64K', rb: 64, pre: 'off', lazy: false, backing: true, comp: true },
      { compat: '1.1', cs: '2M', rb: 16, pre: 'off', lazy: true, backing: true },
      { compat: '1.1', cs: '64K', rb: 16, pre: 'metadata', lazy: false, xl2: true, backing: true },
      { compat: '1.1', cs: '2M', rb: 1, pre: 'falloc', lazy: false, xl2: true, backing: true, comp: true },
    ];
    const comboOptions = (c: Combo) =>
      `compat=${c.compat} cluster_size=${c.cs} refcount_bits=${c.rb} preallocation=${c.pre} lazy_refcounts=${c.lazy ? 'on' : 'off'}${c.xl2 ? ' extended_l2=on' : ''}`;
    const comboName = (c: Combo) => `${comboOptions(c)}${c.comp ? ' (convert -c)' : ''}${c.backing ? ' (backing file)' : ''}`;
    it.each(MATRIX.map((c) => [comboName(c), c] as const))(
      '%s',
      async (name, c) => {
        const img = t.path(`m-${name.replace(/[ =()]/g, '_')}.qcow2`);
        const backingArgs = c.backing ? ['-b', base, '-F', 'raw'] : [];
        const created = await platter(['create', '-q', '-f', 'qcow2', '-o', comboOptions(c).replace(/ /g, ','), ...backingArgs, img, String(SRC_SIZE)]);
        expect(created.stderr).toBe('');
        expect(created.code).toBe(0);
        const want = { size: SRC_SIZE, clusterSize: SIZES[c.cs], compat: c.compat, refcountBits: c.rb, lazy: c.lazy, extendedL2: c.xl2 };
        expectInfo(img, want);
        // Clean before any data, too (preallocated clusters must lie inside the file).
        const empty = expectClean(img);
        if (c.backing) {
          // Before the fill, the base shows through.
          expectIdentical(base, img);
        } else if (c.pre === 'off') {
          expect(sh('qemu-img', ['map', '--output=json', img])).toBe(
            `[{ "start": 0, "length": ${SRC_SIZE}, "depth": 0, "present": false, "zero": true, "data": false}]\n`,
          );
        } else {
          // Every guest cluster is allocated up front.
          expect(empty.allocatedClusters).toBe(Math.ceil(SRC_SIZE / SIZES[c.cs]));
          if (c.pre !== 'metadata') expect(statSync(img).blocks * 512).toBeGreaterThanOrEqual(SRC_SIZE);
        }

        const from = c.comp ? textSrc : src;
        const filled = await platter(['convert', '-n', ...(c.comp ? ['-c'] : []), '-f', 'raw', '-O', 'qcow2', from, img]);
        expect(filled.stderr).toBe('');
        expect(filled.code).toBe(0);
        const check = expectClean(img);
        expectIdentical(from, img);
        expectInfo(img, want);
        expect((await platter(['hash', img])).stdout).toBe(`${c.comp ? textHash : srcHash}  ${img}\n`);
        // Compressed clusters land where nothing was allocated (preallocated ones are written plainly).
        if (c.comp && c.pre === 'off') {
          expect(JSON.parse(sh('qemu-img', ['check', '--output=json', img]))['compressed-clusters']).toBeGreaterThan(0);
        }
        // Platter's check agrees with qemu-img's.
        const ours = JSON.parse((await platter(['check', '--output=json', img])).stdout);
        expect(ours['allocated-clusters']).toBe(check.allocatedClusters);
      },
    );

    it('refuses refcount_bits other than 16, lazy_refcounts and extended_l2 with compat=0.10 (and small clusters), creating nothing', async () => {
      for (const [opts, why] of [
        ['compat=0.10,refcount_bits=1', 'refcount_bits other than 16 needs compat=1.1'],
        ['compat=0.10,refcount_bits=64', 'refcount_bits other than 16 needs compat=1.1'],
        ['compat=0.10,lazy_refcounts=on', 'option lazy_refcounts needs compat=1.1'],
        ['compat=0.10,extended_l2=on', 'Extended L2 entries are only supported with compatibility level 1.1 and above'],
        ['cluster_size=4K,extended_l2=on', 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes'],
      ]) {
        const img = t.path(`refused-${opts.replace(/[,=]/g, '_')}.qcow2`);
        const r = await platter(['create', '-f', 'qcow2', '-o', opts, img, '1M']);
        expect(r.stdout).toBe('');
        expect(r.stderr).toBe(`platter: ${img}: ${why}\n`);
        expect(r.code).toBe(1);
        expect(() => statSync(img)).toThrow();
        // qemu-img refuses the same.
        expect(shStatus('qemu-img', ['create', '-f', 'qcow2', '-o', opts, `${img}.qemu`, '1M']).status).toBe(1);
      }
    });

    it.each([
      ['cluster_size=512', 512, '1.1', 16],
      ['cluster_size=4K,refcount_bits=64', 4096, '1.1', 64],
      ['cluster_size=64K,compat=0.10', 65536, '0.10', 16],
      ['cluster_size=2M,refcount_bits=1', 2 * MiB, '1.1', 1],
      ['cluster_size=64K,extended_l2=on', 65536, '1.1', 16],
      ['cluster_size=16K,extended_l2=on,refcount_bits=64', 16384, '1.1', 64],
    ] as const)('convert -O qcow2 -o %s straight from raw: clean, identical, as sparse as qemu-img convert', async (opts, cs, compat, rb) => {
      const out = t.path(`conv-${opts.replace(/[,=]/g, '_')}.qcow2`);
      const r = await platter(['convert', '-f', 'raw', '-O', 'qcow2', '-o', opts, src, out]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const ours = expectClean(out);
      expectIdentical(src, out);
      expectInfo(out, { size: SRC_SIZE, clusterSize: cs, compat, refcountBits: rb, lazy: false, extendedL2: opts.includes('extended_l2=on') });
      // The same clusters allocated as in qemu-img's own copy (holes and zero runs left out).
      const theirs = `${out}.qemu.qcow2`;
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', opts, src, theirs]);
      expect(layout(sh('qemu-img', ['map', '--output=json', out]))).toEqual(layout(sh('qemu-img', ['map', '--output=json', theirs])));
      expect(ours.allocatedClusters).toBe(qemuCheck(theirs).allocatedClusters);
    });
  });

  describe('images qemu makes read identically in Platter', () => {
    it('a size field that is not whole sectors (a damaged header) is cut down to them, as QEMU reads it', async () => {
      const img = t.path('odd-size.qcow2');
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', img, '1M']);
      const fd = openSync(img, 'r+');
      const size = Buffer.alloc(8);
      size.writeBigUInt64BE(BigInt(MiB + 700));
      writeSync(fd, size, 0, 8, 24);
      closeSync(fd);
      const theirs = JSON.parse(sh('qemu-img', ['info', '--output=json', img]))['virtual-size'];
      const ours = JSON.parse((await platter(['info', '--output=json', img])).stdout)['virtual-size'];
      expect([ours, theirs]).toEqual([MiB + 512, MiB + 512]);
    });

    /** A qemu-made image with seeded qemu-io changes; returns its name. */
    const qemuMade = (compat: string, cs: string, pre: string, seed: number) => {
      const img = t.path(`q-${seed}.qcow2`);
      const size = 8 * MiB - 1536;
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `compat=${compat},cluster_size=${cs},preallocation=${pre}`, img, String(size)]);
      qemuIo(img, randomQemuIoOps(prng(seed), size, SIZES[cs]));
      return img;
    };

    /* Every compat x cluster size, and a falloc-preallocated one (zero clusters that keep their host cluster). */
    const CASES: [string, string, string, number][] = [];
    for (const compat of ['0.10', '1.1']) for (const cs of Object.keys(SIZES)) CASES.push([compat, cs, 'off', 100 + CASES.length]);
    CASES.push(['1.1', '512', 'falloc', 100 + CASES.length]);

    it.each(CASES)('compat=%s cluster_size=%s preallocation=%s (seed %i): same content, same map', async (compat, cs, pre, seed) => {
      const img = qemuMade(compat, cs, pre, seed);
      await expectSameReading(img);
      await expectRandomReads(img, readFileSync(`${img}.qemu.raw`), seed, 3 * SIZES[cs] + 5000);
      const cmp = await platter(['compare', img, `${img}.qemu.raw`]);
      expect(cmp.stdout).toBe('Images are identical.\n');
      expect(cmp.code).toBe(0);
      // The human map too (only stored data, with its host offsets).
      expect((await platter(['map', img])).stdout).toBe(sh('qemu-img', ['map', img]));
    });

    it.each([
      ['1.1', '64K', 'metadata', 200],
      ['0.10', '4K', 'metadata', 201],
    ])(
      'compat=%s cluster_size=%s preallocation=%s (seed %i): data clusters in holes of the file map as "zero": true, as in qemu',
      async (compat, cs, pre, seed) => {
        const img = qemuMade(compat, cs, pre, seed);
        // The content is right ...
        expect((await platter(['hash', img])).stdout).toBe(`${sha256(qemuRaw(img))}  ${img}\n`);
        // ... but qemu asks the file whether a data cluster's bytes are a hole, and Platter does not.
        expect((await platter(['map', '--output=json', img])).stdout).toBe(sh('qemu-img', ['map', '--output=json', img]));
      },
    );

    it('compressed clusters from qemu-img convert -c read identically, and Platter writes over them cleanly', async () => {
      for (const [cs, compat] of [['512', '1.1'], ['4K', '0.10'], ['64K', '1.1'], ['2M', '1.1']] as const) {
        const raw = t.path(`cz-${cs}.raw`);
        const size = 8 * MiB - 512;
        const content = makeRaw(raw, size, prng(7), { compressible: true, pieces: 60 });
        const img = t.path(`cz-${cs}.qcow2`);
        sh('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cs},compat=${compat}`, raw, img]);
        const map = await expectSameReading(img);
        // The test means something only if clusters really are compressed (data without a host offset).
        expect(map).toMatch(/"data": true}/);
        expect(sha256(qemuRaw(img))).toBe(sha256(content));
        await expectRandomReads(img, content, 9, 3 * SIZES[cs] + 5000);

        // Copy-on-write out of compressed clusters, zeroing and discarding them:
        // the shared host clusters' refcounts must come out right.
        const rng = prng(8);
        const image = await openImage(img, { format: 'qcow2', readOnly: false });
        try {
          const clusterSize = SIZES[cs];
          for (let i = 0; i < 40; i++) {
            const off = rng.int(0, size - 1);
            const len = Math.min(size - off, rng.int(1, 2 * clusterSize + 3000));
            const r = rng.next();
            if (r < 0.6) {
              const data = rng.bytes(len);
              await image.write(data, off);
              content.set(data, off);
            } else if (r < 0.8) {
              await image.writeZeroes(off, len, rng.next() < 0.5);
              content.fill(0, off, off + len);
            } else {
              // compat=1.1 without a backing file: discarded clusters read as zeros.
              await image.discard(off, len);
              content.fill(0, Math.ceil(off / clusterSize) * clusterSize, Math.floor((off + len) / clusterSize) * clusterSize);
            }
          }
        } finally {
          await image.close();
        }
        expectClean(img);
        writeFileSync(`${raw}.model`, content);
        expectIdentical(`${raw}.model`, img);
        expect((await platter(['hash', img])).stdout).toBe(`${sha256(content)}  ${img}\n`);
      }
    });
  });

  describe.each(['raw', 'qcow2'] as const)('a backing chain over a %s base', (baseFormat) => {
    const dir = () => t.path(`chain-${baseFormat}`);
    const base = () => `${dir()}/base.${baseFormat}`;
    const mid = () => `${dir()}/mid.qcow2`;
    const top = () => `${dir()}/top.qcow2`;
    beforeAll(() => {
      mkdirSync(dir());
      // base (6 MiB) <- mid (10 MiB, compat=0.10, 512-byte clusters) <- top (12 MiB - 512, 64K clusters):
      // each longer than the one below, so reads past a backing file's end must give zeros.
      if (baseFormat === 'raw') makeRaw(base(), 6 * MiB, prng(11));
      else {
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4K', base(), '6M']);
        qemuIo(base(), randomQemuIoOps(prng(11), 6 * MiB, 4096));
      }
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,compat=0.10', '-b', `base.${baseFormat}`, '-F', baseFormat, mid(), '10M']);
      qemuIo(mid(), randomQemuIoOps(prng(12), 10 * MiB, 512));
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=64K', '-b', 'mid.qcow2', '-F', 'qcow2', top(), String(12 * MiB - 512)]);
      qemuIo(top(), randomQemuIoOps(prng(13), 12 * MiB - 512, 65536));
    });

    it('Platter reads every layer as qemu does, with the same map (depths included)', async () => {
      for (const image of [mid(), top()]) {
        const map = await expectSameReading(image);
        await expectRandomReads(image, readFileSync(`${image}.qemu.raw`), 15, 200_000);
        if (image === top()) for (const depth of [0, 1, 2]) expect(map).toContain(`"depth": ${depth}`);
      }
    });

    it('writes into the top change only the top, check clean, and read back as the merged view', async () => {
      const before = { base: sha256File(base()), mid: sha256File(mid()) };
      const model = qemuRaw(top());
      const rng = prng(14);
      const cs = 65536;
      const image = await openImage(top(), { readOnly: false });
      try {
        expect(image.backing?.backing).toBeDefined();
        for (let i = 0; i < 60; i++) {
          // Partial, unaligned, often across cluster boundaries over ranges the top does not hold.
          const off = rng.int(0, model.length - 1);
          const len = Math.min(model.length - off, rng.int(1, 3 * cs));
          const r = rng.next();
          if (r < 0.65) {
            const data = rng.bytes(len);
            await image.write(data, off);
            model.set(data, off);
          } else if (r < 0.85) {
            await image.writeZeroes(off, len, rng.next() < 0.5);
            model.fill(0, off, off + len);
          } else {
            // compat=1.1 with a backing file: discarded clusters read as zeros, not as the backing file.
            await image.discard(off, len);
            model.fill(0, Math.ceil(off / cs) * cs, Math.min(model.length, Math.floor((off + len) / cs) * cs));
          }
        }
        const all = new Uint8Array(model.length);
        await image.read(all, 0);
        expect(sha256(all)).toBe(sha256(model));
      } finally {
        await image.close();
      }
      expect({ base: sha256File(base()), mid: sha256File(mid()) }).toEqual(before);
      expectClean(top());
      writeFileSync(`${top()}.model`, model);
      expectIdentical(`${top()}.model`, top());
      await expectSameReading(top());
    });
  });

  describe('backing files outside the image folder', () => {
    const outside = () => t.path('outside');
    const inside = () => t.path('inside');
    let baseHash: string;
    beforeAll(() => {
      mkdirSync(outside());
      mkdirSync(`${inside()}/sub`, { recursive: true });
      baseHash = sha256(makeRaw(`${outside()}/base.raw`, 2 * MiB, prng(21)));
      makeRaw(`${inside()}/sub/base.raw`, 2 * MiB, prng(21));
      symlinkSync(`${outside()}/base.raw`, `${inside()}/link.raw`);
      const mk = (name: string, backing: string) =>
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', 'raw', `${inside()}/${name}`, '2M']);
      mk('relative.qcow2', '../outside/base.raw');
      mk('absolute.qcow2', `${outside()}/base.raw`);
      mk('symlink.qcow2', 'link.raw');
      mk('subfolder.qcow2', 'sub/base.raw');
    });

    it.each([
      ['relative.qcow2', '../outside/base.raw'],
      ['absolute.qcow2', 'ABS'],
      ['symlink.qcow2', 'link.raw'],
    ])('%s is refused with one line naming --allow-external-files, and opens when allowed', async (name, backing) => {
      const img = `${inside()}/${name}`;
      const named = backing === 'ABS' ? `${outside()}/base.raw` : backing;
      const err = await openImage(img).then(
        async (i) => {
          await i.close();
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(BlockError);
      expect((err as BlockError).message).toContain(named);
      expect((err as BlockError).message).toContain('--allow-external-files');
      const r = await platter(['hash', img]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^platter: [^\n]*--allow-external-files[^\n]*\n$/);
      const image = await openImage(img, { allowExternalFiles: true });
      try {
        const all = new Uint8Array(image.size);
        await image.read(all, 0);
        expect(sha256(all)).toBe(baseHash);
      } finally {
        await image.close();
      }
    });

    it('a backing file in a subfolder is not outside, and opens by default', async () => {
      const r = await platter(['hash', `${inside()}/subfolder.qcow2`]);
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe(`${baseHash}  ${inside()}/subfolder.qcow2\n`);
    });
  });

  describe('measure equals qemu-img measure', () => {
    it('for new images of several sizes and options', async () => {
      const opts = ['', 'cluster_size=512', 'cluster_size=4K,refcount_bits=1', 'cluster_size=2M,refcount_bits=64', 'compat=0.10', 'preallocation=metadata', 'preallocation=full,cluster_size=4K'];
      for (const o of opts) {
        for (const size of ['0', '512', '1M', '100M', String(123456 * 512), '10G', '1T']) {
          const args = ['-O', 'qcow2', ...(o ? ['-o', o] : []), '--size', size];
          const theirs = shStatus('qemu-img', ['measure', ...args]);
          if (theirs.status !== 0) continue; // too large for the cluster size: see the refusal test below
          for (const fmt of [[], ['--output=json']]) {
            const ours = await platter(['measure', ...fmt, ...args]);
            expect(ours.stderr, `measure ${args.join(' ')}`).toBe('');
            expect(ours.stdout, `measure ${fmt.join(' ')} ${args.join(' ')}`).toBe(sh('qemu-img', ['measure', ...fmt, ...args]));
          }
        }
      }
    });

    it('for a sparse raw source', async () => {
      const sparse = t.path('measure-sparse.raw');
      const fd = openSync(sparse, 'w');
      ftruncateSync(fd, 100 * MiB);
      writeSync(fd, Buffer.from('x'), 0, 1, 50_000_000);
      writeSync(fd, Buffer.alloc(70_000, 1), 0, 70_000, 99 * MiB);
      closeSync(fd);
      for (const file of [src, sparse]) {
        for (const o of [[], ['-o', 'cluster_size=512'], ['-o', 'cluster_size=2M,refcount_bits=1'], ['-o', 'preallocation=falloc']]) {
          for (const fmt of [[], ['--output=json']]) {
            const args = [...fmt, '-O', 'qcow2', ...o, file];
            expect((await platter(['measure', '-f', 'raw', ...args])).stdout, args.join(' ')).toBe(sh('qemu-img', ['measure', '-f', 'raw', ...args]));
          }
        }
      }
    });

    it('a size too large for the cluster size is refused, as qemu-img and platter create refuse it', async () => {
      const args = ['-O', 'qcow2', '-o', 'cluster_size=512', '--size', '1T'];
      expect(shStatus('qemu-img', ['measure', ...args]).status).toBe(1);
      const ours = await platter(['measure', ...args]);
      expect(ours.stdout).toBe('');
      expect(ours.stderr).toMatch(/too large/);
      expect(ours.code).toBe(1);
    });

    it('for a snapshot of a source (-l), and for a copy over a backing file of its own (every cluster counted)', async () => {
      const img = t.path('measure-snap.qcow2');
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', src, img]);
      sh('qemu-img', ['snapshot', '-c', 'then', img]);
      qemuIo(img, ['write -P 7 0 4M']);
      for (const args of [
        ['-l', 'then'],
        ['-l', 'snapshot.name=then'],
        ['-o', `backing_file=${img},backing_fmt=qcow2`],
      ]) {
        const all = ['-O', 'qcow2', ...args, img];
        expect((await platter(['measure', ...all])).stdout, args.join(' ')).toBe(sh('qemu-img', ['measure', ...all]));
      }
    });

    it('for a qcow2 source, with the "bitmaps size" line qemu-img prints', async () => {
      const img = t.path('measure-src.qcow2');
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', src, img]);
      for (const fmt of [[], ['--output=json']]) {
        const args = [...fmt, '-O', 'qcow2', img];
        expect((await platter(['measure', ...args])).stdout).toBe(sh('qemu-img', ['measure', ...args]));
      }
    });
  });

  describe('resize', () => {
    beforeAll(() => makeRaw(t.path('rb-base.raw'), 4 * MiB, prng(32)));

    it('grows a 512-byte-cluster image far past its L1 table, then shrinks it releasing clusters', async () => {
      const img = t.path('resize.qcow2');
      expect((await platter(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', img, '1M'])).code).toBe(0);
      const data = t.path('resize-data.raw');
      const content = makeRaw(data, MiB, prng(31));
      expect((await platter(['convert', '-n', '-f', 'raw', '-O', 'qcow2', data, img])).code).toBe(0);
      const l1Size = () => readFileSync(img).readUInt32BE(36);
      // 512-byte clusters: one L2 table maps 32 KiB, so 1 MiB needs 32 L1 entries and 200 MiB 6400.
      expect(l1Size()).toBe(32);

      const grown = await platter(['resize', img, '+199M']);
      expect(grown.stderr).toBe('');
      expect(grown.stdout).toBe('Image resized.\n');
      expect(l1Size()).toBe(6400);
      const afterGrow = expectClean(img);
      expect(qemuInfo(img)['virtual-size']).toBe(200 * MiB);
      // The old data stays, the new area reads as zeros, and Platter can write there.
      qemuIo(img, ['read -P 0 1M 199M']);
      const image = await openImage(img, { readOnly: false });
      try {
        await image.write(new Uint8Array(70_000).fill(0xab), 150 * MiB - 1000);
      } finally {
        await image.close();
      }
      qemuIo(img, ['read -P 0xab 157285400 70000', 'read -P 0 1M 148M']);
      const model = t.path('resize-model.raw');
      const fd = openSync(model, 'w');
      ftruncateSync(fd, 200 * MiB);
      writeSync(fd, content, 0, content.length, 0);
      writeSync(fd, new Uint8Array(70_000).fill(0xab), 0, 70_000, 150 * MiB - 1000);
      closeSync(fd);
      expectIdentical(model, img);
      expect(expectClean(img).allocatedClusters).toBeGreaterThan(afterGrow.allocatedClusters);

      const beforeShrink = qemuCheck(img);
      // Data clusters past the new end, which the shrink must release.
      const dataPast = layout(sh('qemu-img', ['map', '--output=json', img]))
        .filter((e) => e.data && e.start >= 512 * KiB)
        .reduce((n, e) => n + e.length / 512, 0);
      expect(dataPast).toBeGreaterThan(500);
      const shrunk = await platter(['resize', '--shrink', img, '512K']);
      expect(shrunk.stderr).toBe('');
      expect(shrunk.code).toBe(0);
      const afterShrink = expectClean(img);
      expect(qemuInfo(img)['virtual-size']).toBe(512 * KiB);
      expect(afterShrink.allocatedClusters).toBeLessThanOrEqual(beforeShrink.allocatedClusters - dataPast);
      writeFileSync(model, content.subarray(0, 512 * KiB));
      expectIdentical(model, img);
    });

    it.each([
      ['64 KiB clusters', 'cluster_size=65536', '1M'],
      ['512-byte clusters (refcount blocks past the end dropped)', 'cluster_size=512', '512'],
      ['512-byte clusters, 64-bit refcounts', 'cluster_size=512,refcount_bits=64', '16M'],
      ['4 KiB clusters, 1-bit refcounts', 'cluster_size=4096,refcount_bits=1', '1M'],
    ])('a shrink gives the file back as qemu-img does (%s): the same file size, no more disk', async (label, opts, size) => {
      const [ours, theirs] = ['ours', 'theirs'].map((who) => {
        const p = t.path(`shrink-${label.replace(/\W+/g, '-')}-${who}.qcow2`);
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', opts, p, '32M']);
        qemuIo(p, ['write -P 1 0 1M', 'write -P 3 15M 2M', 'write -P 2 31M 1M']);
        return p;
      });
      expect((await platter(['resize', '--shrink', ours, size])).code).toBe(0);
      sh('qemu-img', ['resize', '--shrink', theirs, size]);
      expectClean(ours);
      expect(shStatus('qemu-img', ['compare', ours, theirs]).status).toBe(0);
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      expect(statSync(ours).blocks).toBeLessThanOrEqual(statSync(theirs).blocks);
    });

    it('a shrink of an image with a snapshot keeps what the snapshot holds and ends the file as qemu-img does', async () => {
      const [ours, theirs] = ['ours', 'theirs'].map((who) => {
        const p = t.path(`shrink-snap-${who}.qcow2`);
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', p, '32M']);
        qemuIo(p, ['write -P 1 0 1M', 'write -P 2 31M 1M']);
        sh('qemu-img', ['snapshot', '-c', 's', p]);
        qemuIo(p, ['write -P 4 30M 1M']);
        return p;
      });
      expect((await platter(['resize', '--shrink', ours, '1M'])).code).toBe(0);
      sh('qemu-img', ['resize', '--shrink', theirs, '1M']);
      expectClean(ours);
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      const snapshot = (p: string) => {
        const out = `${p}.s.raw`;
        sh('qemu-img', ['convert', '-l', 's', '-O', 'raw', p, out]);
        return readFileSync(out);
      };
      expect(snapshot(ours).equals(snapshot(theirs))).toBe(true);
    });

    it('growing over a longer backing file shows zeros in the new area, as qemu-img resize does', async () => {
      for (const [cs, oldSize] of [['64K', '1M'], ['64K', String(MiB + 3 * 512)], ['512', '1000448']]) {
        const ours = t.path(`rb-${cs}-${oldSize}.qcow2`);
        const theirs = t.path(`rb-${cs}-${oldSize}.qemu.qcow2`);
        for (const f of [ours, theirs]) {
          sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, '-b', 'rb-base.raw', '-F', 'raw', f, oldSize]);
        }
        expect((await platter(['resize', ours, '3M'])).code).toBe(0);
        sh('qemu-img', ['resize', '-q', theirs, '3M']);
        expectClean(ours);
        const cmp = shStatus('qemu-img', ['compare', ours, theirs]);
        expect(cmp.stdout).toBe('Images are identical.\n');
        expect(layout(sh('qemu-img', ['map', '--output=json', ours]))).toEqual(layout(sh('qemu-img', ['map', '--output=json', theirs])));
      }
    });

    it('growing a compat=0.10 image over a longer backing file is refused, as qemu-img refuses it', async () => {
      const img = t.path('rb-v2.qcow2');
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'rb-base.raw', '-F', 'raw', img, '1M']);
      const r = await platter(['resize', img, '3M']);
      expect(r.stderr).toMatch(/^platter: [^\n]*backing file[^\n]*\n$/);
      expect(r.code).toBe(1);
      expect(qemuInfo(img)['virtual-size']).toBe(MiB);
      expect(shStatus('qemu-img', ['resize', img, '3M']).status).toBe(1);
      expectClean(img);
    });

    it.each(['metadata', 'falloc', 'full'])(
      '--preallocation=%s maps the new area like qemu-img, reusing freed clusters as zeros',
      async (mode) => {
        const ours = t.path(`rp-${mode}.qcow2`);
        const theirs = t.path(`rp-${mode}.qemu.qcow2`);
        for (const f of [ours, theirs]) {
          sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4K', f, '1000K']);
          // Freed clusters inside the file still hold the pattern: preallocation must not show it.
          sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 3 0 600K', '-c', 'discard 0 300K', f]);
        }
        expect((await platter(['resize', `--preallocation=${mode}`, ours, '+3M'])).code).toBe(0);
        sh('qemu-img', ['resize', '-q', `--preallocation=${mode}`, theirs, '+3M']);
        expectClean(ours);
        expect(shStatus('qemu-img', ['compare', ours, theirs]).stdout).toBe('Images are identical.\n');
        const allocated = (f: string) =>
          (JSON.parse(sh('qemu-img', ['map', '--output=json', f])) as { start: number; length: number; data: boolean }[])
            .filter((e) => e.data)
            .reduce((n, e) => n + e.length, 0);
        expect(allocated(ours)).toBe(allocated(theirs));
        const usage = (f: string) => JSON.parse(sh('qemu-img', ['info', '--output=json', f]))['actual-size'] as number;
        // falloc and full reserve the space; metadata leaves it sparse.
        if (mode === 'metadata') expect(usage(ours)).toBeLessThan(2 * MiB);
        else expect(usage(ours)).toBeGreaterThan(3 * MiB);
      },
    );

    it('raw refuses --preallocation=metadata as qemu-img does', async () => {
      const img = t.path('rp.raw');
      sh('qemu-img', ['create', '-q', '-f', 'raw', img, '1M']);
      const r = await platter(['resize', '-f', 'raw', '--preallocation=metadata', img, '+1M']);
      expect(r.stderr).toBe(`platter: ${img}: Unsupported preallocation mode: metadata\n`);
      expect(r.code).toBe(1);
    });

    it('the Image API resizes too (what the model test uses)', async () => {
      const img = t.path('resize-api.qcow2');
      expect((await platter(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4K', img, '1M'])).code).toBe(0);
      const image = await openImage(img, { readOnly: false });
      try {
        if (!isResizable(image.layer)) throw new Error('the qcow2 layer must be resizable');
        await image.layer.resize(64 * MiB + 512, { prealloc: 'off', shrink: false });
        expect(image.size).toBe(64 * MiB + 512);
      } finally {
        await image.close();
      }
      expectClean(img);
      expect(qemuInfo(img)['virtual-size']).toBe(64 * MiB + 512);
    });
  });

  describe('create edge cases', () => {
    it('a zero-size image leaks no cluster (its L1 table is empty)', async () => {
      const img = t.path('zero-size.qcow2');
      expect((await platter(['create', '-q', '-f', 'qcow2', img, '0'])).code).toBe(0);
      expectClean(img);
      expect((await platter(['resize', img, '1M'])).code).toBe(0);
      expectClean(img);
    });

    it('a compat=1.1 image with 512-byte clusters can have a backing file (qemu leaves out the feature table)', async () => {
      const dir = t.path('small-cluster-backing');
      mkdirSync(dir);
      makeRaw(`${dir}/base.raw`, MiB, prng(41));
      const img = `${dir}/img.qcow2`;
      const r = await platter(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,backing_file=base.raw,backing_fmt=raw', img, '1M']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expectClean(img);
      const info = qemuInfo(img);
      expect([info['backing-filename'], info['backing-filename-format']]).toEqual(['base.raw', 'raw']);
      expect((await platter(['hash', img])).stdout).toBe(`${sha256File(`${dir}/base.raw`)}  ${img}\n`);
    });

    it('as qemu-img: -u with a backing file not there yet, a size rounded up to whole sectors, a size given once only', async () => {
      const info = (img: string) => sh('qemu-img', ['info', '-U', img]).replace(/^image: .*\n/m, '').replace(/disk size: .*\n/, '');
      for (const [label, args] of [
        ['unsafe', ['-u', '-b', 'nothere.qcow2', '-F', 'qcow2']],
        ['odd', ['-o', 'size=1000']],
      ] as const) {
        const [ours, theirs] = [t.path(`${label}-ours.qcow2`), t.path(`${label}-theirs.qcow2`)];
        const size = label === 'odd' ? [] : ['16M'];
        expect(await platter(['create', '-q', '-f', 'qcow2', ...args, ours, ...size]), label).toMatchObject({ code: 0, stderr: '' });
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', ...args, theirs, ...size]);
        expect(info(ours).replaceAll(ours, 'X')).toBe(info(theirs).replaceAll(theirs, 'X'));
      }
      expect(qemuInfo(t.path('odd-ours.qcow2'))['virtual-size']).toBe(1024);
      const twice = t.path('twice.qcow2');
      const r = await platter(['create', '-f', 'qcow2', '-o', 'size=4M', twice, '8M']);
      expect(r).toMatchObject({ code: 1, stderr: `platter: ${twice}: the image size must be given only once (as an argument or as -o size)\n` });
      expect(shStatus('qemu-img', ['create', '-f', 'qcow2', '-o', 'size=4M', t.path('q-twice.qcow2'), '8M']).status).toBe(1);
    });
  });
});
