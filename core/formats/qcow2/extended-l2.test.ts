/**
 * qcow2 extended L2 entries (subclusters) against qemu-img and qemu-io 7.2:
 * images qemu makes read identically in Platter (content and map), images
 * Platter makes and writes check clean and equal a model in qemu, partial
 * writes copy only subclusters, and damaged bitmaps are judged as qemu-img
 * judges them.
 */
import { closeSync, copyFileSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { prng, type Rng } from '../../test/prng.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const KiB = 1024;
const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-qcow2-xl2-')));
afterAll(() => t?.cleanup());

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
const SIZES: Record<string, number> = { '16K': 16 * KiB, '64K': 64 * KiB, '2M': 2 * MiB };

function qemuIo(path: string, cmds: string[]) {
  const r = shStatus('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), path]);
  expect(r.stderr).toBe('');
  expect(r.stdout, cmds.join('; ')).not.toMatch(/error|failed/i);
  expect(r.status).toBe(0);
}

/** A random range, often on subcluster boundaries and shorter than a cluster. */
function range(rng: Rng, size: number, cs: number): [number, number] {
  const sc = cs / 32;
  const r = rng.next();
  let off = r < 0.4 ? rng.int(0, size / sc) * sc : r < 0.5 ? rng.int(0, size / cs) * cs : rng.int(0, size - 1);
  off = Math.min(off, size - 1);
  const l = rng.next();
  const len = l < 0.4 ? rng.int(1, 4) * sc : l < 0.7 ? rng.int(1, sc * 3) : l < 0.9 ? rng.int(1, 2 * cs) : rng.int(1, 5 * cs);
  return [off, Math.min(len, size - off)];
}

/** The guest content as qemu reads it. */
function qemuRaw(path: string): Uint8Array {
  sh('qemu-img', ['convert', '-O', 'raw', path, `${path}.raw`]);
  return readFileSync(`${path}.raw`);
}

function expectClean(path: string) {
  const c = qemuCheck(path);
  expect(problems(c), c.text).toEqual(CLEAN);
  return c;
}

function expectIdentical(raw: string, image: string) {
  const r = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, image]);
  expect(r.stdout + r.stderr).toBe('Images are identical.\n');
  expect(r.status).toBe(0);
}

const extendedL2 = (path: string) =>
  (JSON.parse(sh('qemu-img', ['info', '--output=json', path])) as { 'format-specific': { data: Record<string, unknown> } })['format-specific']
    .data['extended-l2'];

/** A standard qcow2 base of `size` bytes with random data runs, made by qemu. */
function makeBase(path: string, size: number, rng: Rng) {
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4K', path, String(size)]);
  const cmds: string[] = [];
  for (let i = 0; i < 20; i++) {
    const len = rng.int(1, 300 * KiB);
    cmds.push(`write -P 0x${rng.int(1, 256).toString(16)} ${rng.int(0, size - len)} ${len}`);
  }
  qemuIo(path, cmds);
}

describe.skipIf(!HAS_QEMU)('qcow2 extended L2 entries', () => {
  describe('images qemu makes read identically in Platter', () => {
    const CASES: [string, boolean, number][] = [];
    for (const cs of Object.keys(SIZES)) for (const backing of [false, true]) CASES.push([cs, backing, 300 + CASES.length]);

    it.each(CASES)('cluster_size=%s, backing %s (seed %i): same content, same map', async (cs, backing, seed) => {
      const rng = prng(seed);
      const dir = t.path(`q-${seed}`);
      mkdirSync(dir);
      const size = 8 * MiB - 1536;
      const img = `${dir}/img.qcow2`;
      const opts = [`extended_l2=on`, `cluster_size=${cs}`];
      if (backing) {
        // Shorter than the image: reads past its end are zeros.
        makeBase(`${dir}/base.qcow2`, 6 * MiB, rng);
        opts.push('backing_file=base.qcow2', 'backing_fmt=qcow2');
      }
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', opts.join(','), img, String(size)]);
      const cmds: string[] = [];
      // Compressed clusters first: qemu compresses only into clusters that hold nothing yet.
      const clusters = Math.ceil(size / SIZES[cs]);
      for (const c of new Set(Array.from({ length: 3 }, () => rng.int(0, clusters)))) {
        const at = c * SIZES[cs];
        cmds.push(`write -c -P 0x${rng.int(1, 256).toString(16)} ${at} ${Math.min(SIZES[cs], size - at)}`);
      }
      for (let i = 0; i < 40; i++) {
        const [off, len] = range(rng, size, SIZES[cs]);
        const r = rng.next();
        if (r < 0.6) cmds.push(`write -P 0x${rng.int(1, 256).toString(16)} ${off} ${len}`);
        else if (r < 0.85) cmds.push(`write -z ${rng.next() < 0.5 ? '-u ' : ''}${off} ${len}`);
        else cmds.push(`discard ${off} ${len}`);
      }
      qemuIo(img, cmds);
      expect(extendedL2(img)).toBe(true);

      const expected = qemuRaw(img);
      expect((await platter(['hash', img])).stdout).toBe(`${sha256(expected)}  ${img}\n`);
      const map = await platter(['map', '--output=json', img]);
      expect(map.stderr).toBe('');
      expect(map.stdout).toBe(sh('qemu-img', ['map', '--output=json', img]));
      // The human map too (both refuse it when there are compressed clusters).
      const human = await platter(['map', img]);
      const theirs = shStatus('qemu-img', ['map', img]);
      expect(human.code).toBe(theirs.status);
      if (theirs.status === 0) expect(human.stdout).toBe(theirs.stdout);
      // The map means something only if clusters really are split (runs not on cluster boundaries).
      const starts = (JSON.parse(map.stdout) as { start: number }[]).map((e) => e.start);
      expect(starts.some((s) => s % SIZES[cs] !== 0)).toBe(true);
      // Random unaligned reads through the Image API, into buffers that are not zeroed.
      const image = await openImage(img);
      try {
        for (let i = 0; i < 60; i++) {
          const off = rng.int(0, size);
          const buf = new Uint8Array(Math.min(size - off, rng.int(1, 3 * SIZES[cs]))).fill(0xa5);
          await image.read(buf, off);
          if (sha256(buf) !== sha256(expected.subarray(off, off + buf.length))) expect.fail(`read ${off}+${buf.length} differs from qemu`);
        }
      } finally {
        await image.close();
      }
      // Platter's check agrees with qemu-img's (clean, same counts).
      const ours = await platter(['check', '--output=json', img]);
      expect(ours.stdout).toBe(shStatus('qemu-img', ['check', '--output=json', img]).stdout);
    });
  });

  describe('images Platter makes and writes check clean and equal a model', () => {
    const CASES: [string, boolean, number][] = [
      ['16K', true, 400],
      ['16K', false, 401],
      ['64K', true, 402],
      ['64K', false, 403],
      ['2M', true, 404],
    ];
    it.each(CASES)('cluster_size=%s, backing %s (seed %i)', async (cs, backing, seed) => {
      const rng = prng(seed);
      const clusterSize = SIZES[cs];
      const dir = t.path(`p-${seed}`);
      mkdirSync(dir);
      const size = 6 * MiB + 512;
      const img = `${dir}/img.qcow2`;
      const opts = [`extended_l2=on`, `cluster_size=${cs}`];
      const model = new Uint8Array(size);
      if (backing) {
        makeBase(`${dir}/base.qcow2`, 5 * MiB, rng);
        model.set(qemuRaw(`${dir}/base.qcow2`));
        opts.push('backing_file=base.qcow2', 'backing_fmt=qcow2');
      }
      const created = await platter(['create', '-q', '-f', 'qcow2', '-o', opts.join(','), img, String(size)]);
      expect(created.stderr).toBe('');
      expect(created.code).toBe(0);
      expect(extendedL2(img)).toBe(true);
      expectClean(img);

      const sc = clusterSize / 32;
      const image = await openImage(img, { readOnly: false });
      try {
        for (let i = 0; i < 150; i++) {
          const [off, len] = range(rng, size, clusterSize);
          const r = rng.next();
          if (r < 0.6) {
            const data = rng.bytes(len);
            await image.write(data, off);
            model.set(data, off);
          } else if (r < 0.8) {
            await image.writeZeroes(off, len, rng.next() < 0.5);
            model.fill(0, off, off + len);
          } else {
            // Whole subclusters are discarded and read as zeros (with a backing file too).
            await image.discard(off, len);
            model.fill(0, Math.ceil(off / sc) * sc, Math.floor((off + len) / sc) * sc);
          }
        }
        const all = new Uint8Array(size);
        await image.read(all, 0);
        expect(sha256(all)).toBe(sha256(model));
      } finally {
        await image.close();
      }
      expectClean(img);
      writeFileSync(`${dir}/model.raw`, model);
      expectIdentical(`${dir}/model.raw`, img);
      expect((await platter(['check', img])).code).toBe(0);
      // Platter's map of its own image is qemu's too.
      expect((await platter(['map', '--output=json', img])).stdout).toBe(sh('qemu-img', ['map', '--output=json', img]));
    });

    it('a small write into a cluster copies only its subclusters: the backing file shows through the rest', async () => {
      const dir = t.path('partial');
      mkdirSync(dir);
      makeBase(`${dir}/base.qcow2`, 4 * MiB, prng(410));
      const img = `${dir}/img.qcow2`;
      const r = await platter(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=2M,backing_file=base.qcow2,backing_fmt=qcow2', img, '4M']);
      expect(r.code).toBe(0);
      const used = () => statSync(img).blocks * 512;
      const before = used();
      const image = await openImage(img, { readOnly: false });
      try {
        // 1000 bytes inside subcluster 3 (64 KiB subclusters), not on its edges.
        await image.write(new Uint8Array(1000).fill(0x5a), 3 * 65536 + 100);
      } finally {
        await image.close();
      }
      // One 64 KiB subcluster written (plus a 2 MiB L2 table), not the whole 2 MiB cluster.
      expect(used() - before).toBeLessThanOrEqual(2 * MiB + 2 * 65536);
      expectClean(img);
      const map = JSON.parse(sh('qemu-img', ['map', '--output=json', img])) as { start: number; length: number; depth: number }[];
      expect(map.filter((e) => e.depth === 0).map((e) => [e.start, e.length])).toEqual([[3 * 65536, 65536]]);
      const model = qemuRaw(`${dir}/base.qcow2`);
      model.fill(0x5a, 3 * 65536 + 100, 3 * 65536 + 1100);
      writeFileSync(`${dir}/model.raw`, model);
      expectIdentical(`${dir}/model.raw`, img);
    });
  });

  describe('create, measure, info, convert', () => {
    it('refuses extended_l2 where qemu-img does, with its messages, creating nothing', async () => {
      for (const [opts, why] of [
        ['extended_l2=on,compat=0.10', 'Extended L2 entries are only supported with compatibility level 1.1 and above'],
        ['extended_l2=on,cluster_size=8K', 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes'],
        ['extended_l2=on,cluster_size=512', 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes'],
      ]) {
        const img = t.path(`refused-${opts.replace(/[,=]/g, '_')}.qcow2`);
        const r = await platter(['create', '-f', 'qcow2', '-o', opts, img, '1M']);
        expect(r.stderr).toBe(`platter: ${img}: ${why}\n`);
        expect(r.code).toBe(1);
        expect(() => statSync(img)).toThrow();
        const theirs = shStatus('qemu-img', ['create', '-f', 'qcow2', '-o', opts, `${img}.qemu`, '1M']);
        expect(theirs.status).toBe(1);
        expect(theirs.stderr).toContain(why);
      }
    });

    it.each(['metadata', 'falloc'])(
      'preallocation=%s with a backing file: only with extended_l2 (as qemu-img), and the backing file shows through',
      async (pre) => {
        const dir = t.path(`prealloc-${pre}`);
        mkdirSync(dir);
        makeBase(`${dir}/base.qcow2`, 3 * MiB, prng(440));
        const opts = `preallocation=${pre},backing_file=base.qcow2,backing_fmt=qcow2`;
        const refused = await platter(['create', '-q', '-f', 'qcow2', '-o', opts, `${dir}/std.qcow2`, '4M']);
        const why = 'Backing file and preallocation can only be used at the same time if extended_l2 is on';
        expect(refused.stderr).toBe(`platter: ${dir}/std.qcow2: ${why}\n`);
        expect(refused.code).toBe(1);
        expect(shStatus('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', opts, `${dir}/std.qemu.qcow2`, '4M']).stderr).toContain(why);

        const ours = `${dir}/ours.qcow2`;
        const theirs = `${dir}/theirs.qcow2`;
        expect((await platter(['create', '-q', '-f', 'qcow2', '-o', `${opts},extended_l2=on`, ours, '4M'])).code).toBe(0);
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `${opts},extended_l2=on`, theirs, '4M']);
        expectClean(ours);
        expect(sh('qemu-img', ['map', '--output=json', ours])).toBe(sh('qemu-img', ['map', '--output=json', theirs]));
        // Writes then go in place, subcluster by subcluster, in both.
        const cmds = ['write -P 9 100000 5000', 'write -z 1M 40000', 'write -P 8 2000000 1'];
        qemuIo(theirs, cmds);
        const image = await openImage(ours, { readOnly: false });
        try {
          await image.write(new Uint8Array(5000).fill(9), 100000);
          await image.writeZeroes(MiB, 40000, false);
          await image.write(new Uint8Array(1).fill(8), 2000000);
        } finally {
          await image.close();
        }
        expectClean(ours);
        expect(sh('qemu-img', ['compare', ours, theirs])).toBe('Images are identical.\n');
        expect(statSync(ours).size).toBe(statSync(theirs).size);
        expect(sh('qemu-img', ['map', '--output=json', ours])).toBe(sh('qemu-img', ['map', '--output=json', theirs]));
      },
    );

    it('measure equals qemu-img measure', async () => {
      for (const o of ['extended_l2=on', 'extended_l2=on,cluster_size=16K', 'extended_l2=on,cluster_size=2M,refcount_bits=1', 'extended_l2=on,preallocation=metadata']) {
        for (const size of ['0', '1M', '100M', '10G', '1T']) {
          const args = ['measure', '-O', 'qcow2', '-o', o, '--size', size];
          const theirs = shStatus('qemu-img', args);
          const ours = await platter(args);
          expect(ours.code, `${o} ${size}`).toBe(theirs.status);
          expect(ours.stdout, `${o} ${size}`).toBe(theirs.stdout);
        }
      }
      const small = await platter(['measure', '-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=4K', '--size', '1M']);
      expect(small.stderr).toMatch(/at least 16384 bytes/);
      expect(small.code).toBe(1);
    });

    it('info says extended-l2 as qemu-img does', async () => {
      const img = t.path('info.qcow2');
      expect((await platter(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', img, '1M'])).code).toBe(0);
      for (const fmt of [[], ['--output=json']]) {
        expect((await platter(['info', ...fmt, img])).stdout).toBe(sh('qemu-img', ['info', ...fmt, img]));
      }
    });

    it.each([
      ['64K', false],
      ['64K', true],
      ['16K', true],
      ['2M', false],
    ] as const)('convert -O qcow2 -o extended_l2=on,cluster_size=%s (compressed: %s) from raw: clean, identical', async (cs, compressed) => {
      const src = t.path(`conv-src-${cs}-${compressed}.raw`);
      const rng = prng(420);
      const size = 12 * MiB - 3584;
      const content = new Uint8Array(size);
      for (let i = 0; i < 30; i++) {
        const len = rng.int(1, 200 * KiB);
        const off = rng.int(0, size - len);
        // Repetitive data, so deflate has something to do.
        const word = rng.bytes(rng.int(3, 40));
        for (let j = 0; j < len; j++) content[off + j] = word[j % word.length];
      }
      writeFileSync(src, content);
      const out = t.path(`conv-${cs}-${compressed}.qcow2`);
      const r = await platter(['convert', ...(compressed ? ['-c'] : []), '-f', 'raw', '-O', 'qcow2', '-o', `extended_l2=on,cluster_size=${cs}`, src, out]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(extendedL2(out)).toBe(true);
      const c = expectClean(out);
      expectIdentical(src, out);
      const map = sh('qemu-img', ['map', '--output=json', out]);
      if (compressed) expect(map).toMatch(/"data": true}/);
      // Then written over by qemu-io, which must find the compressed entries (bitmap 0) well formed.
      qemuIo(out, [`write -P 7 ${SIZES[cs] / 32 + 5} 3000`, `write -z ${SIZES[cs] * 3} ${SIZES[cs] / 32}`]);
      expectClean(out);
      expect(c.allocatedClusters).toBeGreaterThan(0);
    });
  });

  it('snapshots on an extended-L2 image: kept intact by writes, usable by qemu-img, check clean', async () => {
    const img = t.path('snap.qcow2');
    expect((await platter(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=32K', img, '4M'])).code).toBe(0);
    qemuIo(img, ['write -P 1 0 100k', 'write -P 2 1M 3k', 'write -z 2M 64k']);
    const first = qemuRaw(img);
    expect((await platter(['snapshot', '-c', 'one', img])).code).toBe(0);
    expectClean(img);
    // Subcluster writes into clusters the snapshot shares: copied, not written in place.
    const rng = prng(430);
    const model = Uint8Array.from(first);
    const image = await openImage(img, { readOnly: false });
    try {
      for (let i = 0; i < 60; i++) {
        const [off, len] = range(rng, 4 * MiB, 32 * KiB);
        if (rng.next() < 0.7) {
          const data = rng.bytes(len);
          await image.write(data, off);
          model.set(data, off);
        } else {
          await image.writeZeroes(off, len, rng.next() < 0.5);
          model.fill(0, off, off + len);
        }
      }
    } finally {
      await image.close();
    }
    expectClean(img);
    writeFileSync(t.path('snap-model.raw'), model);
    expectIdentical(t.path('snap-model.raw'), img);
    // The snapshot still holds the old content, for qemu-img too.
    sh('qemu-img', ['convert', '-l', 'snapshot.name=one', '-O', 'raw', img, t.path('snap-one.raw')]);
    expect(sha256(readFileSync(t.path('snap-one.raw')))).toBe(sha256(first));
    expect((await platter(['snapshot', '-a', 'one', img])).code).toBe(0);
    expectClean(img);
    expect(sha256(qemuRaw(img))).toBe(sha256(first));
    expect((await platter(['snapshot', '-d', 'one', img])).code).toBe(0);
    expectClean(img);
    expect(sh('qemu-img', ['snapshot', '-l', img])).toBe('');
  });

  describe('damaged subcluster bitmaps are judged as qemu-img judges them', () => {
    /**
     * A qemu-made image, 64K clusters (2K subclusters): header, refcount
     * table, refcount block, L1, then the L2 table at 0x40000 (16-byte
     * entries): cluster 0 with subclusters 0-1 allocated, cluster 1 with
     * zero subclusters only, cluster 2 all data, cluster 3 compressed.
     */
    const L2 = 0x40000;
    const base = (name: string) => {
      const p = t.path(name);
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', p, '1M']);
      qemuIo(p, ['write -P 2 0 4k', 'write -z 64k 8k', 'write -P 3 128k 64k', 'write -c -P 5 192k 64k']);
      // The layout the pokes below rely on.
      const b = readFileSync(p);
      expect([0, 1, 2, 3].map((i) => b.readBigUInt64BE(L2 + 16 * i + 8))).toEqual([0x3n, 0xf00000000n, 0xffffffffn, 0n]);
      expect(b.readBigUInt64BE(L2 + 48) >> 62n).toBe(1n);
      return p;
    };
    const pokeBitmap = (p: string, entry: number, bitmap: bigint) => {
      const buf = Buffer.alloc(8);
      buf.writeBigUInt64BE(bitmap);
      const fd = openSync(p, 'r+');
      writeSync(fd, buf, 0, 8, L2 + 16 * entry + 8);
      closeSync(fd);
    };

    it.each([
      ['a compressed cluster with a nonzero bitmap', 3, 0x1n, 192 * KiB],
      ['a subcluster both allocated and zero', 0, 0x100000001n, 0],
      ['allocated subclusters in a cluster without a host offset', 1, 0xf00000001n, 64 * KiB],
    ] as const)('%s: reads are refused in one line; check reports what qemu-img reports', async (_name, entry, bitmap, guest) => {
      const p = base(`bad-${entry}.qcow2`);
      pokeBitmap(p, entry, bitmap);
      // check: the same findings, messages, JSON and exit code.
      const ours = await platter(['check', p]);
      const theirs = shStatus('qemu-img', ['check', p]);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(ours.stderr).toBe(theirs.stderr);
      expect(ours.code).toBe(theirs.status);
      expect(ours.code).toBe(2);
      expect((await platter(['check', '--output=json', p])).stdout).toBe(shStatus('qemu-img', ['check', '--output=json', p]).stdout);
      // Reading the damaged cluster fails with one line; other clusters still read.
      const image = await openImage(p);
      try {
        await expect(image.read(new Uint8Array(512), guest)).rejects.toThrow(/subcluster|bitmap/);
        const ok = new Uint8Array(4096);
        await image.read(ok, 128 * KiB);
        expect(ok.every((b) => b === 3)).toBe(true);
      } finally {
        await image.close();
      }
      const conv = await platter(['convert', '-O', 'raw', p, `${p}.raw`]);
      expect(conv.code).toBe(1);
      expect(conv.stderr).toMatch(/^platter: [^\n]*(subcluster|bitmap)[^\n]*\n$/);
      expect(() => statSync(`${p}.raw`)).toThrow();
    });

    it('the extended L2 bit on an image with clusters under 16 KiB is refused on open, as qemu refuses it', async () => {
      const p = t.path('small-subclusters.qcow2');
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4K', p, '1M']);
      const fd = openSync(p, 'r+');
      writeSync(fd, Buffer.from([0x10]), 0, 1, 79); // incompatible_features, bit 4
      closeSync(fd);
      expect(shStatus('qemu-img', ['info', p]).stderr).toMatch(/Unsupported subcluster size: 128/);
      const r = await platter(['info', p]);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(`platter: ${p}: subclusters of 128 bytes are not supported (extended L2 entries need clusters of at least 16 KiB)\n`);
      expect(r.code).toBe(1);
    });

    it('bit 0 of an extended entry (the standard zero flag) is ignored, as qemu ignores it', async () => {
      const p = base('bit0.qcow2');
      const b = readFileSync(p);
      const e = b.readBigUInt64BE(L2 + 32) | 1n;
      const copy = `${p}.orig`;
      copyFileSync(p, copy);
      const buf = Buffer.alloc(8);
      buf.writeBigUInt64BE(e);
      const fd = openSync(p, 'r+');
      writeSync(fd, buf, 0, 8, L2 + 32);
      closeSync(fd);
      expect(shStatus('qemu-img', ['check', p]).status).toBe(0);
      expect((await platter(['check', p])).code).toBe(0);
      expect((await platter(['hash', p])).stdout).toBe(`${sha256(qemuRaw(copy))}  ${p}\n`);
    });
  });
});
