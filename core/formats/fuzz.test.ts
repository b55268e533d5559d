/**
 * Mutation fuzzing of the image drivers (see core/test/fuzz.ts): small
 * images made by qemu-img (and Platter, for what qemu-img cannot make), a
 * few bytes changed per case; info, map, reads, check and check -r all must
 * each work or refuse with one clear sentence, and where check -r all calls
 * an image clean, qemu-img check must agree. The cases are seeded: the same
 * on every run. A failing case is replayed with FUZZ_ONLY=seed:case, and
 * FUZZ_KEEP=DIR keeps its file; FUZZ_CASES sets the cases per seed (CI runs
 * 100; a campaign, thousands) and FUZZ_FROM the first case's number.
 */
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../image/open.js';
import { compare } from '../ops/compare.js';
import { platter, platterProcess } from '../test/cli.js';
import { exercise, mutate, nonZeroWords, type FuzzSeed } from '../test/fuzz.js';
import { prng } from '../test/prng.js';
import { qemuCheck, qemuIo } from '../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../test/tmp.js';
import { setVhdxChecksum } from './vhdx/crc32c.js';
import { buildEntry } from './vhdx/log.js';
import { vhdChecksum } from './vpc/footer.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const CASES = Number(process.env.FUZZ_CASES) || 100;
/** The first case's number: a campaign can go on where another stopped. */
const FIRST = Number(process.env.FUZZ_FROM) || 0;
const ONLY = process.env.FUZZ_ONLY ? process.env.FUZZ_ONLY.split(':') : undefined;
const KiB = 1024;
const MiB = 1 << 20;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-fuzz-')));
afterAll(() => t?.cleanup());

function qemuImg(...args: string[]): void {
  sh('qemu-img', args);
}

/** A small image made by qemu-img, with data and zeros written by qemu-io. */
function qemuMade(name: string, format: string, opts: string, size = '4M'): string {
  const path = t.path(name);
  qemuImg('create', '-q', '-f', format, ...(opts ? ['-o', opts] : []), path, size);
  qemuIo(path, ['write -P 0x11 0 4k', 'write -P 0x22 1M 8k', 'write -z 2M 64k', 'write -P 0x33 3M 4k'], format);
  return path;
}

/** A new 4 MiB VHDX made by Platter. */
async function platterMade(name: string, opts: string): Promise<string> {
  const path = t.path(name);
  const made = await platter(['create', '-q', '-f', 'vhdx', '-o', opts, path, '4M']);
  expect(made.code, made.stderr).toBe(0);
  return path;
}

/** Host ranges holding guest data, per qemu-img map: their words are not worth aiming at. */
function dataRanges(path: string, format: string): [number, number][] {
  const map = JSON.parse(sh('qemu-img', ['map', '--output=json', '-f', format, path])) as {
    data: boolean;
    length: number;
    offset?: number;
  }[];
  return map.filter((e) => e.data && e.offset !== undefined).map((e) => [e.offset!, e.offset! + e.length]);
}

/** qemu-img check's verdict on an image Platter repaired: it must find no corruption and no leak. */
function qemuFindsClean(format: string): (path: string) => string | undefined {
  return (path) => {
    const c = qemuCheck(path, format);
    return c.status === 0 ? undefined : `Platter repaired it, but qemu-img check says (exit ${c.status}): ${c.text.trim()}`;
  };
}

/**
 * The same for VHDX, but for a disk of size 0: qemu-img opens one only when
 * its BAT region is as large as qemu-img's 32-bit count of no blocks wraps
 * around to (see newBatLength in vhdx/bat.ts); Platter reads it as the
 * empty disk it is, by design.
 */
function qemuFindsCleanVhdx(path: string): string | undefined {
  const wrong = qemuFindsClean('vhdx')(path);
  if (!wrong) return undefined;
  const info = platterProcess(['info', '--output=json', path]);
  return info.code === 0 && JSON.parse(info.stdout)['virtual-size'] === 0 ? undefined : wrong;
}

/** VHD checksums: the footer's copy at 0, the dynamic header at 512 (when there is one), the footer at the end. */
function fixVhd(b: Uint8Array): void {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const footer = (at: number) => view.setUint32(at + 64, vhdChecksum(b.subarray(at, at + 512), 64));
  footer(0);
  footer(b.length - 512);
  if (String.fromCharCode(...b.subarray(512, 520)) === 'cxsparse') view.setUint32(512 + 36, vhdChecksum(b.subarray(512, 1536), 36));
}

const H1 = 64 * KiB;
const H2 = 128 * KiB;
const RT1 = 192 * KiB;
const RT2 = 256 * KiB;
/** Where Platter and qemu-img put the log. */
const LOG = MiB;
const VHDX_HOT: [number, number][] = [
  [H1, H1 + 128],
  [H2, H2 + 128],
  [RT1, RT1 + 128],
  [RT2, RT2 + 128],
];

/** VHDX checksums: both headers, both region tables, and a log entry at the log's start. */
function fixVhdx(b: Uint8Array): void {
  for (const h of [H1, H2]) setVhdxChecksum(b.subarray(h, h + 4 * KiB), 4);
  for (const r of [RT1, RT2]) setVhdxChecksum(b.subarray(r, r + 64 * KiB), 4);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const length = view.getUint32(LOG + 8, true);
  if (String.fromCharCode(...b.subarray(LOG, LOG + 4)) === 'loge' && length >= 4 * KiB && length <= MiB) {
    setVhdxChecksum(b.subarray(LOG, LOG + length), 4);
  }
}

/** A seed to build, with its format. */
interface SeedSpec {
  name: string;
  format: string;
  build: () => Promise<Omit<FuzzSeed, 'name'>> | Omit<FuzzSeed, 'name'>;
  /** qemu-img can map it (so its data is left alone). */
  mapByQemu?: boolean;
  /** Whether Platter must read a mutated image as qemu-img reads it, where both read it. */
  readsAsQemu?: (bytes: Uint8Array) => boolean;
}

const always = () => true;

const qcow2 = (name: string, opts: string, extra: (p: string) => void = () => undefined): SeedSpec => ({
  name,
  format: 'qcow2',
  mapByQemu: true,
  readsAsQemu: always,
  build: () => {
    const path = qemuMade(`${name}.qcow2`, 'qcow2', opts);
    qemuIo(path, ['discard 3M 4k']);
    extra(path);
    return { path, hot: [[0, 4 * KiB]], repairs: true, judgeRepaired: qemuFindsClean('qcow2') };
  },
});

const SEEDS: SeedSpec[] = [
  qcow2('qcow2-v3', 'compat=1.1,cluster_size=64k', (p) => {
    qemuImg('snapshot', '-c', 'first', p);
    qemuIo(p, ['write -P 0x44 0 4k']);
    qemuImg('bitmap', '--add', p, 'dirty0');
  }),
  qcow2('qcow2-v2', 'compat=0.10,cluster_size=4k', (p) => qemuImg('snapshot', '-c', 'first', p)),
  qcow2('qcow2-xl2', 'compat=1.1,cluster_size=32k,extended_l2=on,refcount_bits=1'),
  qcow2('qcow2-r64', 'compat=1.1,cluster_size=512,refcount_bits=64'),
  {
    // Compressed clusters: qemu-img's convert -c of a raw image with text in it.
    name: 'qcow2-z',
    format: 'qcow2',
    mapByQemu: true,
    readsAsQemu: always,
    build: () => {
      const raw = t.path('text.raw');
      writeFileSync(raw, Buffer.alloc(2 * MiB, 'platter fuzz text '));
      const path = t.path('qcow2-z.qcow2');
      qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4k', raw, path);
      return { path, hot: [[0, 4 * KiB]], repairs: true, judgeRepaired: qemuFindsClean('qcow2') };
    },
  },
  ...['dynamic', 'fixed'].map(
    (subformat): SeedSpec => ({
      name: `vpc-${subformat}`,
      format: 'vpc',
      mapByQemu: true,
      // Where a dynamic image's footer copy at the start says "fixed" and the footer at the end does not, QEMU
      // takes the copy (and the file for a fixed disk); Platter lets the end decide, by design (see vpc/open.ts).
      readsAsQemu: (b) => subformat === 'fixed' || b.subarray(0, 512).every((x, i) => x === b[b.length - 512 + i]),
      build: () => {
        const path = qemuMade(`vpc-${subformat}.vhd`, 'vpc', `subformat=${subformat}`);
        const size = readFileSync(path).length;
        return { path, hot: [[0, 2 * KiB], [size - 512, size]], fixChecksums: fixVhd };
      },
    }),
  ),
  ...(
    [
      ['vdi', 'vdi', ''],
      ['vdi-static', 'vdi', 'static=on'],
      ['vmdk', 'vmdk', 'subformat=monolithicSparse'],
    ] as const
  ).map(
    ([name, format, opts]): SeedSpec => ({
      name,
      format,
      mapByQemu: true,
      readsAsQemu: always,
      build: () => {
        const path = qemuMade(`${name}.${format}`, format, opts);
        return { path, hot: [[0, 4 * KiB]], repairs: true, judgeRepaired: qemuFindsClean(format) };
      },
    }),
  ),
  {
    // A stream can only be written in order: qemu-img converts a raw image into it.
    name: 'vmdk-stream',
    format: 'vmdk',
    mapByQemu: true,
    readsAsQemu: always,
    build: () => {
      const raw = qemuMade('stream-source.raw', 'raw', '');
      const path = t.path('vmdk-stream.vmdk');
      qemuImg('convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, path);
      return { path, hot: [[0, 4 * KiB]], repairs: true, judgeRepaired: qemuFindsClean('vmdk') };
    },
  },
  {
    name: 'vhdx-qemu',
    format: 'vhdx',
    mapByQemu: true,
    // Where the region table's copies differ, QEMU reads the first even when it is nonsense (a region
    // past the end of the file); Platter then reads the second, by design.
    readsAsQemu: (b) => b.subarray(RT1, RT1 + 64 * KiB).every((x, i) => x === b[RT2 + i]),
    build: () => {
      const path = qemuMade('vhdx-qemu.vhdx', 'vhdx', 'block_size=1M,log_size=1M', '8M');
      return { path, hot: VHDX_HOT, fixChecksums: fixVhdx, repairs: true, judgeRepaired: qemuFindsCleanVhdx };
    },
  },
  {
    // qemu-img cannot open 4096-byte sectors: Platter writes the data, and only Platter judges the repair.
    name: 'vhdx-4k',
    format: 'vhdx',
    build: async () => {
      const path = await platterMade('vhdx-4k.vhdx', 'block_size=1M,logical_sector_size=4096');
      const image = await openImage(path, { readOnly: false });
      await image.write(new Uint8Array(4 * KiB).fill(0x11), 0);
      await image.write(new Uint8Array(8 * KiB).fill(0x22), 2 * MiB);
      await image.close();
      return { path, hot: VHDX_HOT, fixChecksums: fixVhdx, repairs: true };
    },
  },
  {
    // A dirty log (made as in vhdx/hostile.test.ts): one entry rewriting the BAT's first page and zeroing a range.
    name: 'vhdx-log',
    format: 'vhdx',
    build: async () => {
      const path = await platterMade('vhdx-log.vhdx', 'block_size=1M');
      qemuIo(path, ['write -P 0x11 0 4k', 'write -P 0x22 2M 8k'], 'vhdx');
      const b = new Uint8Array(readFileSync(path));
      const guid = new Uint8Array(16).fill(0x5a);
      for (const h of [H1, H2]) b.set(guid, h + 48);
      const bat = 2 * MiB;
      const writes = [
        { fileOffset: bat, data: b.slice(bat, bat + 4 * KiB) },
        { fileOffset: 8 * MiB, zeroLength: 4 * KiB },
      ];
      b.set(buildEntry({ sequence: 5n, logGuid: guid, tail: 0, fileSize: b.length, writes }), LOG);
      fixVhdx(b);
      writeFileSync(path, b);
      const hot: [number, number][] = [...VHDX_HOT, [LOG, LOG + 8 * KiB]];
      return { path, hot, fixChecksums: fixVhdx, repairs: true, judgeRepaired: qemuFindsCleanVhdx };
    },
  },
];

describe.skipIf(!HAS_QEMU)('mutated images work or are refused clearly', () => {
  for (const spec of SEEDS) {
    it.skipIf(ONLY && ONLY[0] !== spec.name)(spec.name, async () => {
      const seed: FuzzSeed = { name: spec.name, ...(await spec.build()) };
      const original = new Uint8Array(readFileSync(seed.path));
      const data = spec.mapByQemu ? dataRanges(seed.path, spec.format) : [];
      const words = nonZeroWords(original).filter((w) => !data.some(([from, to]) => w >= from && w < to));
      const failures: string[] = [];
      const cases = ONLY ? [Number(ONLY[1])] : Array.from({ length: CASES }, (_, i) => FIRST + i);
      for (const index of cases) {
        const rng = prng(hashName(spec.name) ^ Math.imul(index + 1, 0x9e3779b1));
        const { bytes, changes } = mutate(rng, original, seed, words);
        const note = `${spec.name}:${index} changes ${JSON.stringify(changes)}`;
        if (process.env.FUZZ_LOG) appendFileSync(process.env.FUZZ_LOG, note + '\n');
        const path = t.path(`case.${spec.format}`);
        writeFileSync(path, bytes);
        // The case under way is kept too: a hang leaves it behind.
        if (process.env.FUZZ_KEEP) writeFileSync(`${process.env.FUZZ_KEEP}/current.${spec.format}`, bytes);
        const outcome = await exercise(path, t.path(`repair.${spec.format}`), seed, rng);
        if (process.env.FUZZ_LOG) appendFileSync(process.env.FUZZ_LOG, `  ${outcome.steps.join(' ')}\n`);
        if (!outcome.failure && spec.readsAsQemu?.(bytes) && outcome.steps[0] === 'read:ok') {
          outcome.failure = await readsLikeQemu(path, spec.format);
        }
        if (!outcome.failure) continue;
        failures.push(`${note}\n${outcome.steps.join(' ')}\n${outcome.failure}`);
        if (process.env.FUZZ_KEEP) writeFileSync(`${process.env.FUZZ_KEEP}/${spec.name}-${index}.${spec.format}`, bytes);
      }
      expect(failures).toEqual([]);
    }, 600_000);
  }
});

/** Whether Platter reads the guest data qemu-img reads (when qemu-img reads it at all). */
async function readsLikeQemu(path: string, format: string): Promise<string | undefined> {
  const raw = `${path}.qemu.raw`;
  const info = shStatus('qemu-img', ['info', '--output=json', '-f', format, path]);
  if (info.status !== 0 || JSON.parse(info.stdout)['virtual-size'] > 64 * MiB) return undefined;
  if (shStatus('qemu-img', ['convert', '-f', format, '-O', 'raw', path, raw]).status !== 0) return undefined;
  const r = await compare({ a: path, formatA: format, b: raw, formatB: 'raw' });
  return r.identical ? undefined : `Platter reads other data than qemu-img: ${JSON.stringify(r)}`;
}

/** FNV-1a: each seed's cases get their own sequence. */
function hashName(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}
