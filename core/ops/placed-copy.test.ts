/**
 * Threaded copies into new qcow2, VHD and VHDX images: worker threads write
 * the data clusters (blocks), the calling thread maps them (placed-copy.ts).
 * What they write must be what the in-process pipeline writes
 * (PLATTER_COPY_THREADS=1): the same guest content, the same clusters
 * allocated, and an image its checkers find clean, with no cluster leaked
 * from what was reserved for threads.
 */
import { closeSync, ftruncateSync, openSync, readdirSync, statSync, writeSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createImage, openImage } from '../image/open.js';
import { createOptionsOf, findDriver } from '../image/registry.js';
import { resolveOptions } from '../options/schema.js';
import { platterProcess } from '../test/cli.js';
import { prng } from '../test/prng.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo } from '../test/qemu.js';
import { hasTool, sh, shStatus, tempDir, withSmallDisk } from '../test/tmp.js';
import { vhdiinfo } from '../test/vhdi.js';
import type { ClusterPlacement } from '../image/driver.js';
import { FileProtocol } from '../io/file.js';
import { copyInWorkers } from './copy-workers.js';
import { DEFAULT_COPY_OPTIONS, type CopySpan } from './copy.js';
import { PlacementService } from './placed-copy.js';

const KiB = 1024;
const MiB = 1 << 20;
/** Above copy-workers' MIN_BYTES, and not a whole number of clusters: the last one is cut by the end. */
const SIZE = 96 * MiB + 1536;
const SCRIPT = new URL('../../dist/copy-worker.cjs', import.meta.url);
const hasQemu = hasTool('qemu-img', 'apt-get install qemu-utils');

const t = tempDir();
afterAll(() => t.cleanup());

/**
 * A raw file of 256 KiB blocks, each a hole, random data, data with zero
 * 4 KiB blocks inside, or written zeros; the last bytes are data.
 */
function makeRaw(name: string, size = SIZE, seed = 1): string {
  const path = t.path(name);
  const rng = prng(seed);
  const fd = openSync(path, 'w');
  try {
    for (let at = 0; at < size; at += 256 * KiB) {
      const len = Math.min(256 * KiB, size - at);
      const pick = rng.int(0, 99);
      if (pick < 35) continue;
      const block = pick < 80 ? rng.bytes(len) : new Uint8Array(len);
      if (pick >= 80 && pick < 90) for (let b = 0; b < len; b += 8 * KiB) block.set(rng.bytes(Math.min(4 * KiB, len - b)), b);
      writeSync(fd, block, 0, len, at);
    }
    writeSync(fd, rng.bytes(700), 0, 700, size - 700);
  } finally {
    closeSync(fd);
  }
  return path;
}

interface MapExtent {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/**
 * qemu-img's map of an image without host offsets (where a cluster went is
 * up to each copy): which guest ranges are data, zero or neither, with
 * neighbours alike merged.
 */
function guestMap(path: string, format = 'qcow2'): MapExtent[] {
  const map = JSON.parse(sh('qemu-img', ['map', '--output=json', '-f', format, path])) as MapExtent[];
  const merged: MapExtent[] = [];
  for (const { start, length, data, zero } of map) {
    const last = merged[merged.length - 1];
    if (last && last.data === data && last.zero === zero && last.start + last.length === start) last.length += length;
    else merged.push({ start, length, data, zero });
  }
  return merged;
}

/** A new qcow2 with the default options, still under its temporary name. */
function newQcow2(name: string, size: number) {
  const qcow2 = findDriver('qcow2');
  return createImage(t.path(name), qcow2, size, resolveOptions(createOptionsOf(qcow2), {}, 'qcow2'));
}

function convert(args: string[], threads: string) {
  return platterProcess(['convert', ...args], { env: { PLATTER_COPY_THREADS: threads } });
}

describe('host clusters reserved for threads', () => {
  it('come allocated in the file, and what no thread wrote is freed at the end, past the end of the file too', async () => {
    const cs = 64 * KiB;
    let fileEnd = 0;
    const unreserved: number[][] = [];
    const placement: ClusterPlacement = {
      clusterSize: cs,
      hostStride: cs,
      appendOnly: false,
      reserve: async (count) => (fileEnd += count * cs) - count * cs,
      unreserve: async (host, count) => void unreserved.push([host, count]),
      map: async () => undefined,
    };
    const path = t.path('runs.bin');
    const file = await FileProtocol.open(path, { readOnly: false, create: true });
    try {
      const service = await PlacementService.start(placement, file, 1, 0, undefined, (err) => {
        throw err;
      });
      // The worker's two slots hold a run each, allocated and never taken.
      expect(statSync(path).blocks * 512).toBeGreaterThanOrEqual(8 * MiB);
      const own = service.ownSide().clusters;
      const [run] = (await own.take(3))!;
      await file.write(new Uint8Array(3 * cs).fill(9), run.host);
      await service.finish();
      expect(unreserved.length).toBe(3);
      expect(statSync(path).size).toBe(run.host + 3 * cs);
      // Only the three clusters written keep their blocks.
      expect(statSync(path).blocks * 512).toBe(3 * cs);
    } finally {
      await file.close();
    }
  });
});

describe.skipIf(!hasQemu)('copy on threads into a new qcow2', () => {
  const src = makeRaw('src.raw');

  const variants: [string, string[]][] = [
    ['defaults (64 KiB clusters)', []],
    ['512-byte clusters', ['-o', 'cluster_size=512']],
    ['2 MiB clusters (bigger than a chunk)', ['-o', 'cluster_size=2M']],
    ['extended L2 entries (in-process: subclusters one by one)', ['-o', 'extended_l2=on,cluster_size=128k']],
    ['compat 0.10', ['-o', 'compat=0.10']],
    ['1-bit refcounts', ['-o', 'refcount_bits=1']],
    ['64-bit refcounts', ['-o', 'refcount_bits=64']],
    ['lazy refcounts', ['-o', 'lazy_refcounts=on']],
    ['-S 0: every cluster, holes included', ['-S', '0']],
    ['-S 1M (in-process: zero blocks bigger than a chunk)', ['-S', '1M']],
  ];
  it.each(variants)('%s: clean, identical, and mapped as the in-process copy maps it', (label, opts) => {
    const name = label.replace(/\W+/g, '-');
    const outs = ['1', '2', '3'].map((threads) => {
      const out = t.path(`${name}-${threads}.qcow2`);
      const r = convert(['-f', 'raw', '-O', 'qcow2', ...opts, src, out], threads);
      expect(r, `threads=${threads}`).toMatchObject({ code: 0, stderr: '' });
      expect(problems(qemuCheck(out)), `threads=${threads}`).toEqual(CLEAN);
      expect(qemuCompare(src, out), `threads=${threads}`).toMatch(/identical/);
      expect(qemuInfo(out)['dirty-flag'], `threads=${threads}`).toBe(false);
      return out;
    });
    const inProcess = guestMap(outs[0]);
    expect(guestMap(outs[1])).toEqual(inProcess);
    expect(guestMap(outs[2])).toEqual(inProcess);
  });

  it('each thread fills its runs with guest-contiguous data: the file is hardly fragmented', () => {
    // Big enough that the worker, which starts some 50 ms late, copies much of it.
    const big = makeRaw('big.raw', 512 * MiB, 5);
    const out = t.path('layout-2.qcow2');
    expect(convert(['-f', 'raw', '-O', 'qcow2', big, out], '2')).toMatchObject({ code: 0, stderr: '' });
    const report = JSON.parse(shStatus('qemu-img', ['check', '--output=json', out]).stdout) as Record<string, number>;
    // Chunks taken one at a time interleaved the threads' data in every run: 13% fragmented here.
    expect(report['fragmented-clusters'] / report['allocated-clusters']).toBeLessThan(0.05);
  });

  it("the runs' blocks allocated ahead and not written are freed: none past the file's end, none unaccounted", () => {
    const out = t.path('allocated-2.qcow2');
    expect(convert(['-f', 'raw', '-O', 'qcow2', src, out], '2')).toMatchObject({ code: 0, stderr: '' });
    const { size, blocks } = statSync(out);
    // Every run a thread took and did not fill (each worker ends with two untouched) is given back.
    expect(blocks * 512).toBeLessThanOrEqual(size);
    expect(problems(qemuCheck(out))).toEqual(CLEAN);
  });

  it('little data in a big image: the file ends about where qemu-img\'s does, not after the runs reserved', () => {
    const sparse = t.path('sparse.raw');
    const fd = openSync(sparse, 'w');
    try {
      const rng = prng(7);
      for (const mib of [0, 3, 7, 50, 200, 600, 900]) writeSync(fd, rng.bytes(MiB), 0, MiB, mib * MiB);
      ftruncateSync(fd, 1024 * MiB);
    } finally {
      closeSync(fd);
    }
    const ours = t.path('sparse-2.qcow2');
    const theirs = t.path('sparse-qemu.qcow2');
    expect(convert(['-f', 'raw', '-O', 'qcow2', sparse, ours], '2')).toMatchObject({ code: 0, stderr: '' });
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', sparse, theirs]);
    expect(qemuCompare(sparse, ours)).toMatch(/identical/);
    // With 4 MiB runs whatever the data, this file was 17 MB against qemu-img's 7.7.
    expect(statSync(ours).size).toBeLessThan(statSync(theirs).size * 1.2);
  });

  it('dd with skip and count into a new qcow2', () => {
    const outs = ['1', '2'].map((threads) => {
      const out = t.path(`dd-${threads}.qcow2`);
      const r = platterProcess(['dd', '-f', 'raw', '-O', 'qcow2', 'bs=1M', 'skip=3', 'count=80', `if=${src}`, `of=${out}`], {
        env: { PLATTER_COPY_THREADS: threads },
      });
      expect(r, `threads=${threads}`).toMatchObject({ code: 0, stderr: '' });
      expect(problems(qemuCheck(out))).toEqual(CLEAN);
      return out;
    });
    expect(qemuCompare(outs[0], outs[1])).toMatch(/identical/);
    expect(guestMap(outs[1])).toEqual(guestMap(outs[0]));
  });

  it('sources end to end: on threads when each ends on a cluster, in-process otherwise, right either way', async () => {
    const a = makeRaw('part-a.raw', 48 * MiB, 2);
    const b = makeRaw('part-b.raw', 40 * MiB + 512, 3);
    const c = makeRaw('part-c.raw', 30 * MiB, 4);
    const open = (p: string) => openImage(p, { format: 'raw' });
    const [ia, ib, ic] = [await open(a), await open(b), await open(c)];
    const spansOf = (images: typeof ia[]) => {
      let at = 0;
      return images.map((source): CopySpan => {
        const span = { source, sourceOffset: 0, length: source.size, targetOffset: at };
        at += source.size;
        return span;
      });
    };
    const copyInto = async (name: string, spans: CopySpan[]) => {
      const size = spans.reduce((n, s) => n + s.length, 0);
      const created = await newQcow2(name, size);
      try {
        const threaded = await copyInWorkers(spans, created.image, { ...DEFAULT_COPY_OPTIONS, targetIsZero: true }, {}, SCRIPT);
        await created.commit({ durable: false });
        return threaded;
      } catch (err) {
        await created.abort();
        throw err;
      }
    };
    try {
      expect(await copyInto('aligned.qcow2', spansOf([ia, ic, ib]))).toBe(true);
      // b's end splits a cluster between b and c: the threads leave it to the pipeline.
      expect(await copyInto('unaligned.qcow2', spansOf([ia, ib, ic]))).toBe(false);
    } finally {
      await Promise.all([ia.close(), ib.close(), ic.close()]);
    }
    expect(problems(qemuCheck(t.path('aligned.qcow2')))).toEqual(CLEAN);
    const joined = t.path('joined.raw');
    sh('sh', ['-c', `cat '${a}' '${c}' '${b}' > '${joined}'`]);
    expect(qemuCompare(joined, t.path('aligned.qcow2'))).toMatch(/identical/);
    const r = convert(['-f', 'raw', '-O', 'qcow2', a, b, c, t.path('cli-unaligned.qcow2')], '2');
    expect(r).toMatchObject({ code: 0, stderr: '' });
    sh('sh', ['-c', `cat '${a}' '${b}' '${c}' > '${joined}'`]);
    expect(qemuCompare(joined, t.path('cli-unaligned.qcow2'))).toMatch(/identical/);
  });

  it('only a qcow2 with nothing in it takes placed clusters', async () => {
    const create = (p: string, ...opts: string[]) => sh('qemu-img', ['create', '-q', '-f', 'qcow2', ...opts, p, '96M']);
    const cases: [string, (p: string) => void][] = [
      ['new', (p) => create(p)],
      ['data', (p) => (create(p), sh('qemu-io', ['-c', 'write 1M 4k', p]))],
      ['backing', (p) => create(p, '-b', 'placement-new.qcow2', '-F', 'qcow2')],
      ['snapshot', (p) => (create(p), sh('qemu-img', ['snapshot', '-c', 's', p]))],
      ['bitmap', (p) => (create(p), sh('qemu-img', ['bitmap', '--add', p, 'b']))],
      ['metadata', (p) => create(p, '-o', 'preallocation=metadata')],
      ['extended-l2', (p) => create(p, '-o', 'extended_l2=on')],
      ['data-file', (p) => create(p, '-o', `data_file=${p}.data`)],
    ];
    const placed: Record<string, boolean> = {};
    for (const [name, make] of cases) {
      const p = t.path(`placement-${name}.qcow2`);
      make(p);
      const img = await openImage(p, { format: 'qcow2', readOnly: false });
      try {
        placed[name] = img.clusterPlacement() !== undefined;
      } finally {
        await img.close();
      }
    }
    const refused = { data: false, backing: false, snapshot: false, bitmap: false, metadata: false, 'extended-l2': false };
    expect(placed).toEqual({ new: true, ...refused, 'data-file': false });
    const readOnly = await openImage(t.path('placement-new.qcow2'), { format: 'qcow2', readOnly: true });
    expect(readOnly.clusterPlacement()).toBeUndefined();
    await readOnly.close();
  });

  it('a qcow2 maps each placed cluster once, and refuses to map one again', async () => {
    const p = t.path('placement-twice.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '96M']);
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    try {
      const placement = img.clusterPlacement()!;
      const host = await placement.reserve(3);
      await placement.map(5, host, 3);
      await expect(placement.map(7, host, 1)).rejects.toThrow('guest cluster 7 is mapped already');
      await img.flush();
    } finally {
      await img.close();
    }
    const map = JSON.parse(sh('qemu-img', ['map', '--output=json', p])) as MapExtent[];
    expect(map.filter((e) => e.data)).toEqual([expect.objectContaining({ start: 5 * 65536, length: 3 * 65536 })]);
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
  });

  it("a thread's error ends the convert as one line, and no target is left", () => {
    const bad = t.path('bad.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', bad, '96M']);
    sh('qemu-io', ['-c', 'write -P 0x55 0 64k', '-c', 'write -P 0x66 70M 64k', bad]);
    // A reserved bit in the L2 entry of guest cluster 70M / 64K: reading there fails.
    sh('python3', [
      '-c',
      `import struct,sys
f=open(sys.argv[1],'r+b'); d=f.read()
l1=struct.unpack('>Q',d[40:48])[0]; l2=struct.unpack('>Q',d[l1:l1+8])[0]&0x00fffffffffffe00
at=l2+(70*1024*1024//65536)*8; e=struct.unpack('>Q',d[at:at+8])[0]|2
f.seek(at); f.write(struct.pack('>Q',e))`,
      bad,
    ]);
    const r = convert(['-f', 'qcow2', '-O', 'qcow2', bad, t.path('bad-out.qcow2')], '2');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^platter: ${bad}: .*reserved bits are set\\n$`));
    expect(readdirSync(t.dir).filter((n) => n.includes('bad-out'))).toEqual([]);
  });

  it.each(['qcow2', 'vpc', 'vhdx'])('a full disk under the threads: one line, and nothing left on the disk (%s)', (fmt) => {
    const mnt = t.path(`small-${fmt}`);
    withSmallDisk(mnt, '8m', `threaded full-disk test into ${fmt}`, () => {
      const r = convert(['-f', 'raw', '-O', fmt, src, `${mnt}/out.${fmt}`], '2');
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`platter: ${mnt}/out.${fmt}: no space left on device\n`);
      expect(readdirSync(mnt)).toEqual([]);
    });
  });
});

describe.skipIf(!hasQemu)('copy on threads into a new VHD or VHDX', () => {
  const src = makeRaw('src-vhd.raw', SIZE, 6);
  const hasVhdi = hasTool('vhdiinfo', 'apt-get install libvhdi-utils');

  const variants: [string, string, string[]][] = [
    ['vpc', 'dynamic (2 MiB blocks, a bitmap before each)', []],
    ['vpc', 'dynamic, -S 0', ['-S', '0']],
    ['vpc', 'fixed (in place, as raw)', ['-o', 'subformat=fixed']],
    ['vhdx', 'dynamic (8 MiB blocks, bigger than a chunk)', []],
    ['vhdx', '1 MiB blocks', ['-o', 'block_size=1M']],
    ['vhdx', 'block_state_zero=off', ['-o', 'block_state_zero=off']],
    ['vhdx', '-S 1M', ['-S', '1M']],
    ['vhdx', 'fixed (in-process)', ['-o', 'subformat=fixed']],
  ];
  it.each(variants)('%s, %s: identical, and laid out as the in-process copy lays it out', (fmt, label, opts) => {
    const name = `${fmt}-${label.replace(/\W+/g, '-')}`;
    const outs = ['1', '2', '3'].map((threads) => {
      const out = t.path(`${name}-${threads}.${fmt}`);
      const r = convert(['-f', 'raw', '-O', fmt, ...opts, src, out], threads);
      expect(r, `threads=${threads}`).toMatchObject({ code: 0, stderr: '' });
      // A fixed VHD has no header for qemu-img to probe: the format is given.
      expect(sh('qemu-img', ['compare', '-f', 'raw', '-F', fmt, src, out]), `threads=${threads}`).toMatch(/identical/);
      if (fmt === 'vhdx') expect(problems(qemuCheck(out, 'vhdx')), `threads=${threads}`).toEqual(CLEAN);
      if (hasVhdi) vhdiinfo(out);
      return out;
    });
    const inProcess = guestMap(outs[0], fmt);
    const file = statSync(outs[0]);
    for (const out of outs.slice(1)) {
      expect(guestMap(out, fmt)).toEqual(inProcess);
      // The same blocks, one after another with no gap, and holes where the in-process copy leaves them.
      expect(statSync(out).size).toBe(file.size);
      expect(Math.abs(statSync(out).blocks - file.blocks)).toBeLessThanOrEqual(file.blocks / 100);
    }
  });

  it('only a dynamic VHD or VHDX with nothing in it takes placed clusters', async () => {
    const create = (fmt: string, p: string, ...opts: string[]) => sh('qemu-img', ['create', '-q', '-f', fmt, ...opts, p, '96M']);
    const cases: [string, string, (p: string) => void][] = [
      ['vpc', 'new', (p) => create('vpc', p)],
      ['vpc', 'data', (p) => (create('vpc', p), sh('qemu-io', ['-f', 'vpc', '-c', 'write 1M 4k', p]))],
      ['vpc', 'fixed', (p) => create('vpc', p, '-o', 'subformat=fixed')],
      ['vhdx', 'new', (p) => create('vhdx', p)],
      ['vhdx', 'data', (p) => (create('vhdx', p), sh('qemu-io', ['-f', 'vhdx', '-c', 'write 1M 4k', p]))],
      ['vhdx', 'fixed', (p) => create('vhdx', p, '-o', 'subformat=fixed')],
    ];
    const placed: Record<string, boolean> = {};
    for (const [fmt, name, make] of cases) {
      const p = t.path(`placement-${name}.${fmt}`);
      make(p);
      const img = await openImage(p, { format: fmt, readOnly: false });
      try {
        placed[`${fmt} ${name}`] = img.clusterPlacement() !== undefined;
      } finally {
        await img.close();
      }
    }
    expect(placed).toEqual({
      'vpc new': true,
      'vpc data': false,
      'vpc fixed': false,
      'vhdx new': true,
      'vhdx data': false,
      'vhdx fixed': false,
    });
  });
});
