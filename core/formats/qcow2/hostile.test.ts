/**
 * Hostile qcow2 images. Each one is a valid image (made by qemu-img, or by
 * Platter itself) with one field changed, and each must be refused with one
 * clear sentence (a BlockError of a stable kind; on the command line one line,
 * `platter: FILE: ...`, exit code 1), or read: never a crash, a raw JavaScript
 * error text, a hang or a large allocation.
 *
 * Field offsets are qcow2's (docs/interop/qcow2.txt, block/qcow2.h QCowHeader);
 * every field is big-endian.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ErrorKind } from '../../image/errors.js';
import { openImage } from '../../image/open.js';
import { PLATTER_BIN } from '../../test/cli.js';
import { bounded, expectClear, RAW_JS_TEXT, rejection } from '../../test/hostile.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, sh, tempDir } from '../../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');

const KiB = 1024;
const MiB = 1024 * KiB;
/** Per test: a hostile image must be dealt with in well under this. */
const TEST_TIMEOUT_MS = 10_000;
/** A CLI run that takes longer is killed and counts as a hang. */
const CLI_TIMEOUT_MS = 5_000;

/** qcow2 header fields: their byte offsets (block/qcow2.h QCowHeader). */
const H = {
  version: 4, //                  u32: 2 or 3
  backing_file_offset: 8, //      u64
  backing_file_size: 16, //       u32
  cluster_bits: 20, //            u32: 9..21
  size: 24, //                    u64: virtual size
  l1_size: 36, //                 u32: entries
  l1_table_offset: 40, //         u64
  refcount_table_offset: 48, //   u64
  refcount_table_clusters: 56, // u32
  nb_snapshots: 60, //            u32
  snapshots_offset: 64, //        u64
  incompatible_features: 72, //   u64 (version 3 from here on)
  refcount_order: 96, //          u32
  header_length: 100, //          u32
} as const;

/** Bits of an L1/L2/refcount-table entry (qcow2.txt "Cluster mapping"). */
const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;
const OFFSET_MASK = 0x00fffffffffffe00n; // bits 9-55
/** QEMU's QCOW_MAX_L1_SIZE (32 MiB) in entries. */
const L1_MAX_ENTRIES = (32 * MiB) / 8;

/** Messages that are JavaScript leaking through instead of a sentence about the image. */
// ---------------------------------------------------------------- images

let t: ReturnType<typeof tempDir>;

/** The bases every hostile image starts from. */
type Base = 'qemu-64k' | 'qemu-512' | 'platter-64k' | 'qemu-compressed' | 'qemu-backing' | 'qemu-snapshot';
const basePath = (b: Base) => t.path(`base-${b}.qcow2`);

/** Where a base's structures are, read from the file itself. */
interface Layout {
  clusterBits: number;
  clusterSize: number;
  l1Offset: number;
  l1Size: number;
  reftableOffset: number;
  /** The first refcount block (refcount table entry 0). */
  refblock: number;
  /** The L2 table of L1 entry 0. */
  l2Offset: number;
  /** L2 entry 0 (guest cluster 0), raw. */
  l2Entry0: bigint;
}

function layout(f: Buffer): Layout {
  const clusterBits = f.readUInt32BE(H.cluster_bits);
  const l1Size = f.readUInt32BE(H.l1_size);
  const l1Offset = Number(f.readBigUInt64BE(H.l1_table_offset));
  const reftableOffset = Number(f.readBigUInt64BE(H.refcount_table_offset));
  const refblock = Number(f.readBigUInt64BE(reftableOffset) & OFFSET_MASK);
  const l2Offset = Number(f.readBigUInt64BE(l1Offset) & OFFSET_MASK);
  const l2Entry0 = l2Offset ? f.readBigUInt64BE(l2Offset) : 0n;
  return { clusterBits, clusterSize: 2 ** clusterBits, l1Offset, l1Size, reftableOffset, refblock, l2Offset, l2Entry0 };
}

/**
 * A copy of `base` with `patch` applied, written as `name`.qcow2. The patch
 * changes the buffer in place, or returns a new one (a truncated file).
 */
function hostile(name: string, base: Base, patch: (f: Buffer, l: Layout) => unknown): string {
  const f = readFileSync(basePath(base));
  const r = patch(f, layout(f));
  const out = Buffer.isBuffer(r) ? r : f;
  const path = t.path(`${base}--${name.replace(/[^A-Za-z0-9_.-]+/g, '_')}.qcow2`);
  writeFileSync(path, out);
  return path;
}

// ------------------------------------------------------------- assertions

const openQcow2 = (path: string, readOnly = true) => openImage(path, { format: 'qcow2', readOnly });

/** Opening is refused. */
async function expectOpenRefused(path: string, kind: ErrorKind, message: RegExp, readOnly = true): Promise<void> {
  const err = await bounded(() => rejection(openQcow2(path, readOnly).then((img) => img.close())));
  expectClear(err, path, kind, message);
}

/** Opening works; reading `length` bytes at `offset` is refused. */
async function expectReadRefused(path: string, kind: ErrorKind, message: RegExp, offset = 0, length = 64 * KiB): Promise<void> {
  const image = await bounded(() => openQcow2(path));
  try {
    const err = await bounded(() => rejection(image.read(new Uint8Array(length), offset)));
    expectClear(err, path, kind, message);
  } finally {
    await image.close();
  }
}

/** Opening works and `length` bytes at `offset` read as `expected` returns. */
async function readBytes(path: string, offset = 0, length = 64 * KiB): Promise<Uint8Array> {
  const image = await bounded(() => openQcow2(path));
  try {
    const buf = new Uint8Array(length);
    await bounded(() => image.read(buf, offset));
    return buf;
  } finally {
    await image.close();
  }
}

/** The built CLI in a child process, killed after CLI_TIMEOUT_MS. */
function cli(args: string[]): { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [PLATTER_BIN, ...args], { encoding: 'utf8', timeout: CLI_TIMEOUT_MS });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * `platter info`, `map` or `convert -O raw` on the image: exit code 1, one
 * line `platter: PATH: ...` on stderr matching `message`, no stack trace, and
 * (convert) no output file left behind.
 */
function expectCliRefused(command: 'info' | 'map' | 'convert', path: string, message: RegExp): void {
  const out = `${path}.out.raw`;
  const args = command === 'convert' ? ['convert', '-f', 'qcow2', '-O', 'raw', path, out] : [command, '-f', 'qcow2', path];
  const r = cli(args);
  expect(r.signal, `platter ${command} hung (killed after ${CLI_TIMEOUT_MS} ms)`).toBeNull();
  expect({ code: r.code, stderr: r.stderr }).toEqual({
    code: 1,
    stderr: expect.stringMatching(new RegExp(`^platter: ${escapeRe(path)}: [^\\n]+\\n$`)),
  });
  expect(r.stderr).toMatch(message);
  expect(r.stderr).not.toMatch(RAW_JS_TEXT);
  if (command === 'convert') expect(existsSync(out), 'convert left its output behind').toBe(false);
}

// ------------------------------------------------------------------ setup

/** dist/cli.cjs, rebuilt when older than any engine source (the CLI tests run the build). */
function ensureBuilt(): void {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const bundle = join(root, 'dist/cli.cjs');
  const newest = (dir: string): number => {
    let m = 0;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      m = Math.max(m, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
    }
    return m;
  };
  if (!existsSync(bundle) || statSync(bundle).mtimeMs < newest(join(root, 'core'))) {
    sh(process.execPath, [join(root, 'scripts/build.mjs')], { cwd: root });
  }
}

beforeAll(() => {
  t = tempDir('platter-hostile-');
  if (!HAS_QEMU) return;
  ensureBuilt();
  // 64 KiB clusters, 16 MiB, two data clusters at guest 0 (refcount table at
  // 0x10000, refcount block at 0x20000, L1 at 0x30000, L2 at 0x40000).
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', basePath('qemu-64k'), '16M']);
  sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xa5 0 128k', basePath('qemu-64k')]);
  // 512-byte clusters (the smallest): no feature-name table fits in cluster 0.
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', basePath('qemu-512'), '1M']);
  sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xa5 0 4k', basePath('qemu-512')]);
  // Platter's own layout, with data written by Platter.
  const raw = t.path('pattern.raw');
  writeFileSync(raw, Buffer.alloc(1 * MiB, 0xa5));
  const made = cli(['convert', '-f', 'raw', '-O', 'qcow2', raw, basePath('platter-64k')]);
  if (made.code !== 0) throw new Error(`platter convert failed: ${made.stderr}`);
  // Compressed clusters (qemu-img convert -c).
  const text = Buffer.alloc(128 * KiB);
  for (let i = 0; i < text.length; i++) text[i] = 0x41 + ((i * 7) % 26);
  writeFileSync(t.path('text.raw'), text);
  sh('qemu-img', ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', t.path('text.raw'), basePath('qemu-compressed')]);
  // A backing file name in the first cluster (a raw base in the same folder).
  writeFileSync(t.path('backing.raw'), Buffer.alloc(1 * MiB, 0x11));
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'backing.raw', '-F', 'raw', basePath('qemu-backing'), '1M']);
  // One internal snapshot.
  copyFileSync(basePath('qemu-64k'), basePath('qemu-snapshot'));
  sh('qemu-img', ['snapshot', '-c', 's1', basePath('qemu-snapshot')]);
});
afterAll(() => t?.cleanup());

// ------------------------------------------------------------------ tests

describe.skipIf(!HAS_QEMU)('hostile qcow2 images', { timeout: TEST_TIMEOUT_MS }, () => {
  it('the bases themselves open, read and pass qemu-img check', async () => {
    for (const b of ['qemu-64k', 'qemu-512', 'platter-64k', 'qemu-compressed', 'qemu-backing', 'qemu-snapshot'] as const) {
      expect(problems(qemuCheck(basePath(b))), b).toEqual(CLEAN);
      const image = await openQcow2(basePath(b));
      await image.read(new Uint8Array(4096), 0);
      await image.close();
    }
    expect((await readBytes(basePath('qemu-64k'), 0, 4096)).every((x) => x === 0xa5)).toBe(true);
  });

  // --------------------------------------------------------------- header

  /** Header fields, patched in each of the three plain bases. */
  describe.each(['qemu-64k', 'qemu-512', 'platter-64k'] as const)('header of %s', (base) => {
    /** A misaligned offset: half a cluster (or one sector, for 512-byte clusters) past an aligned one. */
    const misaligned = (l: Layout, offset: number) => offset + Math.max(8, l.clusterSize / 2);

    const cases: [string, (f: Buffer, l: Layout) => void, ErrorKind, RegExp][] = [
      ['header_length 0xffffffff', (f) => f.writeUInt32BE(0xffffffff, H.header_length), 'InvalidFormat', /header_length 4294967295 is invalid/],
      ['header_length 0', (f) => f.writeUInt32BE(0, H.header_length), 'InvalidFormat', /header_length 0 is invalid/],
      ['header_length 103 (below 104)', (f) => f.writeUInt32BE(103, H.header_length), 'InvalidFormat', /header_length 103 is invalid/],
      ['header_length 105 (not a multiple of 8)', (f) => f.writeUInt32BE(105, H.header_length), 'InvalidFormat', /header_length 105 is invalid/],
      [
        'a header extension of length 0x7fffffff',
        (f) => {
          const at = f.readUInt32BE(H.header_length); // the first extension
          f.writeUInt32BE(0x0bad0bad, at); //      extension type (unknown; a 512-byte cluster has none to patch)
          f.writeUInt32BE(0x7fffffff, at + 4); //  extension length
        },
        'InvalidFormat',
        /header extension 0x(6803f857|bad0bad) is too large \(2147483647 bytes\)/,
      ],
      [
        'an end-of-extensions marker with a length of 8 MiB (QEMU checks its length too)',
        (f) => {
          const at = f.readUInt32BE(H.header_length);
          f.writeUInt32BE(0, at); //           the end marker
          f.writeUInt32BE(8 << 20, at + 4); // its length
        },
        'InvalidFormat',
        /the header extensions' end marker is too large \(8388608 bytes\)/,
      ],
      ['refcount_table_clusters 0xffffffff', (f) => f.writeUInt32BE(0xffffffff, H.refcount_table_clusters), 'InvalidFormat', /refcount table is too large/],
      ['refcount_table_clusters 0', (f) => f.writeUInt32BE(0, H.refcount_table_clusters), 'InvalidFormat', /refcount table is empty/],
      [
        'a misaligned refcount table offset',
        (f, l) => f.writeBigUInt64BE(BigInt(misaligned(l, l.reftableOffset)), H.refcount_table_offset),
        'InvalidFormat',
        /refcount table offset \d+ is not aligned to a cluster/,
      ],
      ['a refcount table offset of 2^60', (f) => f.writeBigUInt64BE(1n << 60n, H.refcount_table_offset), 'InvalidFormat', /refcount table offset \d+ is too large/],
      [
        'a misaligned L1 table offset',
        (f, l) => f.writeBigUInt64BE(BigInt(misaligned(l, l.l1Offset)), H.l1_table_offset),
        'InvalidFormat',
        /L1 table offset \d+ is not aligned to a cluster/,
      ],
      ['an L1 table offset of 2^60', (f) => f.writeBigUInt64BE(1n << 60n, H.l1_table_offset), 'InvalidFormat', /L1 table offset \d+ is too large/],
      [
        'a misaligned snapshot table offset (nb_snapshots 1)',
        (f, l) => {
          f.writeUInt32BE(1, H.nb_snapshots);
          f.writeBigUInt64BE(BigInt(misaligned(l, 4 * l.clusterSize)), H.snapshots_offset);
        },
        'InvalidFormat',
        /snapshot table offset \d+ is not aligned to a cluster/,
      ],
      [
        'a misaligned snapshot table offset with no snapshots (QEMU checks it all the same)',
        (f, l) => f.writeBigUInt64BE(BigInt(misaligned(l, 4 * l.clusterSize)), H.snapshots_offset),
        'InvalidFormat',
        /snapshot table offset \d+ is not aligned to a cluster/,
      ],
      [
        'a snapshot table offset of 2^60 (nb_snapshots 1)',
        (f) => {
          f.writeUInt32BE(1, H.nb_snapshots);
          f.writeBigUInt64BE(1n << 60n, H.snapshots_offset);
        },
        'InvalidFormat',
        /snapshot table offset \d+ is too large/,
      ],
      ['nb_snapshots 0xffffffff', (f) => f.writeUInt32BE(0xffffffff, H.nb_snapshots), 'InvalidFormat', /too many snapshots \(4294967295/],
      ['l1_size 0xffffffff', (f) => f.writeUInt32BE(0xffffffff, H.l1_size), 'InvalidFormat', /the L1 table is too large \(4294967295 entries\)/],
      [
        'a virtual size the L1 table cannot cover (l1_size too small)',
        (f) => f.writeBigUInt64BE(1n << 40n, H.size), // 1 TiB, with l1_size still covering 16 MiB (or 1 MiB)
        'InvalidFormat',
        /the L1 table \(\d+ entries\) is too small for the virtual size/,
      ],
      ['a virtual size of 2^60', (f) => f.writeBigUInt64BE(1n << 60n, H.size), 'InvalidFormat', /virtual size \d+ is too large/],
      [
        'an unknown incompatible feature (bit 40)',
        (f) => f.writeBigUInt64BE(1n << 40n, H.incompatible_features),
        'Unsupported',
        /unknown incompatible features: bit 40/,
      ],
      ['cluster_bits 8 (below 512 bytes)', (f) => f.writeUInt32BE(8, H.cluster_bits), 'InvalidFormat', /cluster_bits 8 is outside 9\.\.21/],
      ['cluster_bits 22 (above 2 MiB)', (f) => f.writeUInt32BE(22, H.cluster_bits), 'InvalidFormat', /cluster_bits 22 is outside 9\.\.21/],
      ['version 1 (qcow, opened as qcow2)', (f) => f.writeUInt32BE(1, H.version), 'Unsupported', /qcow2 version 1 is not supported/],
      ['version 4', (f) => f.writeUInt32BE(4, H.version), 'Unsupported', /qcow2 version 4 is not supported/],
      ['refcount_order 7 (128-bit refcounts)', (f) => f.writeUInt32BE(7, H.refcount_order), 'InvalidFormat', /refcount_order 7 is too large/],
      [
        'reserved bits (0-8) in a refcount table entry',
        (f, l) => f.writeBigUInt64BE(BigInt(l.refblock) | 1n, l.reftableOffset), // refcount table entry 0, bit 0
        'Corrupt',
        /refcount table entry 0 has reserved bits set/,
      ],
      [
        'an impossible offset (bit 63) in a refcount table entry',
        // Bits 9-63 are the offset (qcow2.txt); QEMU's REFT_OFFSET_MASK keeps bit 63.
        (f, l) => f.writeBigUInt64BE(BigInt(l.refblock) | (1n << 63n), l.reftableOffset),
        'Corrupt',
        /refcount block 0 is at an impossible offset/,
      ],
    ];
    if (base !== 'qemu-512') {
      // 512-byte clusters: every offset an entry can hold is aligned.
      cases.push([
        'a refcount table entry not aligned to a cluster',
        (f, l) => f.writeBigUInt64BE(BigInt(l.refblock + l.clusterSize / 2), l.reftableOffset), // refcount table entry 0
        'Corrupt',
        /refcount block 0 is not cluster aligned/,
      ]);
    }

    it.each(cases)('%s is refused (API and platter info)', async (name, patch, kind, message) => {
      const path = hostile(name, base, patch);
      await expectOpenRefused(path, kind, message);
      expectCliRefused('info', path, message);
    });

    it('truncated to its first 100 bytes: refused as too short (not as "header_length 0")', async () => {
      const path = hostile('first 100 bytes', base, (f) => f.subarray(0, 100));
      await expectOpenRefused(path, 'InvalidFormat', /^the file is too short for a qcow2 header \(100 bytes\)$/);
      expectCliRefused('info', path, /too short for a qcow2 header/);
      expectCliRefused('convert', path, /too short for a qcow2 header/);
    });
  });

  describe('large but legal tables', () => {
    it("l1_size at QEMU's maximum (4M entries, 32 MiB) in a 450 KB file: opens without a second 32 MiB copy", async () => {
      // The L1 table moves to a new cluster at the end of the file; all but its first entries lie past the end.
      const path = hostile('largest L1 table', 'qemu-64k', (f, l) => {
        const at = Math.ceil(f.length / l.clusterSize) * l.clusterSize;
        const out = Buffer.alloc(at + l.clusterSize);
        f.copy(out);
        f.copy(out, at, l.l1Offset, l.l1Offset + l.l1Size * 8);
        out.writeUInt32BE(L1_MAX_ENTRIES, H.l1_size);
        out.writeBigUInt64BE(BigInt(at), H.l1_table_offset);
        return out;
      });
      expect((await readBytes(path, 0, 4096)).every((x) => x === 0xa5)).toBe(true);
    });

    it('a 4 PiB image (qemu-img create, 2 MiB clusters, a 6 MB file): map finishes quickly', () => {
      const path = t.path('4PiB.qcow2');
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', path, '4P']);
      const r = cli(['map', '--output=json', '-f', 'qcow2', path]);
      expect(r.signal, `platter map hung (killed after ${CLI_TIMEOUT_MS} ms)`).toBeNull();
      expect(JSON.parse(r.stdout)).toEqual(JSON.parse(sh('qemu-img', ['map', '--output=json', '-f', 'qcow2', path])));
    });
  });

  describe('header feature bits (qemu-64k)', () => {
    it('the corrupt bit: read-only open works, read-write open is refused', async () => {
      const path = hostile('corrupt bit', 'qemu-64k', (f) => f.writeBigUInt64BE(1n << 1n, H.incompatible_features)); // bit 1: corrupt
      expect((await readBytes(path, 0, 4096)).every((x) => x === 0xa5)).toBe(true);
      await expectOpenRefused(path, 'Corrupt', /marked corrupt.*read-only/, false);
      const r = cli(['info', '-f', 'qcow2', '--output=json', path]);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)['format-specific'].data.corrupt).toBe(true);
    });

    it('the dirty bit: a read-write open repairs the refcounts and clears it', async () => {
      const path = hostile('dirty bit', 'qemu-64k', (f) => f.writeBigUInt64BE(1n << 0n, H.incompatible_features)); // bit 0: dirty
      expect((await readBytes(path, 0, 4096)).every((x) => x === 0xa5)).toBe(true);
      // resize opens read-write: the image is repaired, resized and left clean.
      const r = cli(['resize', '-f', 'qcow2', path, '32M']);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
      expect(JSON.parse(sh('qemu-img', ['info', '--output=json', path]))['dirty-flag']).toBe(false);
      expect(problems(qemuCheck(path))).toEqual(CLEAN);
    });

    it('the unknown incompatible bit is named by the feature-name table when it has a name', async () => {
      // Feature table entry 2 ("external data file", bit 2) renamed and moved to bit 40.
      const path = hostile('named unknown bit', 'qemu-64k', (f) => {
        f.writeBigUInt64BE(1n << 40n, H.incompatible_features);
        const entry = 112 + 8 + 2 * 48; //         feature table (at header_length 112) entry 2
        f[entry + 1] = 40; //                      its bit number
        f.fill(0, entry + 2, entry + 48).write('teleportation', entry + 2, 'latin1'); // its name
      });
      await expectOpenRefused(path, 'Unsupported', /unknown incompatible features: teleportation/);
    });
  });

  describe('backing file name (qemu-backing)', () => {
    it('backing_file_size 0xffffffff is refused', async () => {
      const path = hostile('backing_file_size 0xffffffff', 'qemu-backing', (f) => f.writeUInt32BE(0xffffffff, H.backing_file_size));
      await expectOpenRefused(path, 'InvalidFormat', /backing file name is too long \(4294967295 bytes/);
      expectCliRefused('info', path, /backing file name is too long/);
    });

    it('backing_file_offset past the first cluster is refused', async () => {
      const path = hostile('backing_file_offset past cluster 0', 'qemu-backing', (f, l) =>
        f.writeBigUInt64BE(BigInt(l.clusterSize + 16), H.backing_file_offset),
      );
      await expectOpenRefused(path, 'InvalidFormat', /backing file name lies outside the first cluster/);
      expectCliRefused('info', path, /backing file name lies outside the first cluster/);
    });

    it('backing_file_offset 2^60 is refused', async () => {
      const path = hostile('backing_file_offset 2^60', 'qemu-backing', (f) => f.writeBigUInt64BE(1n << 60n, H.backing_file_offset));
      await expectOpenRefused(path, 'InvalidFormat', /backing file offset \d+ is too large/);
    });
  });

  describe('snapshots (qemu-snapshot)', () => {
    it('an L2 table shared with a snapshot but counted free: a write never hands its cluster out, and nothing is written', async () => {
      // Found by the fuzz tests (qcow2-v2:9341): copy-on-write took the
      // table's own cluster for the new one, freed it again as the old
      // table, and failed on a TypeError when writing the changes back.
      const path = hostile('shared L2 table counted free', 'qemu-snapshot', (f, l) =>
        f.writeUInt16BE(0, l.refblock + 2 * (l.l2Offset / l.clusterSize)),
      );
      const before = readFileSync(path);
      const image = await openQcow2(path, false);
      try {
        const err = await bounded(() => rejection(image.write(new Uint8Array(512).fill(0xee), 0)));
        expectClear(err, path, 'Corrupt', /the refcounts call cluster \d+ free, but it holds the L2 table; repair the image/);
      } finally {
        await image.close().catch(() => {});
      }
      expect(readFileSync(path).equals(before), 'the image changed').toBe(true);
    });

    it('a snapshot whose L1 table has l1_size 0: the image opens and reads; exporting it is clean either way', async () => {
      const path = hostile('snapshot l1_size 0', 'qemu-snapshot', (f) => {
        const table = Number(f.readBigUInt64BE(H.snapshots_offset));
        f.writeUInt32BE(0, table + 8); // snapshot 0: l1_size (after its u64 l1_table_offset)
      });
      // The active L1 table is intact, so the data reads. (qemu-img opens it
      // too; its check reports the snapshot's clusters as 4 leaks.)
      expect((await readBytes(path, 0, 128 * KiB)).every((x) => x === 0xa5)).toBe(true);
      const info = cli(['info', '-f', 'qcow2', path]);
      expect({ code: info.code, stderr: info.stderr }).toEqual({ code: 0, stderr: '' });
      // Exporting the snapshot: qemu-img gives zeros; refusing in one line is as good.
      const out = `${path}.s1.raw`;
      const r = cli(['convert', '-f', 'qcow2', '-l', 's1', '-O', 'raw', path, out]);
      expect(r.signal, 'platter convert -l hung').toBeNull();
      if (r.code !== 0) {
        expect({ code: r.code, stderr: r.stderr }).toEqual({
          code: 1,
          stderr: expect.stringMatching(new RegExp(`^platter: ${escapeRe(path)}: [^\\n]*snapshot[^\\n]*\\n$`)),
        });
        expect(existsSync(out), 'convert left its output behind').toBe(false);
      }
    });
  });

  describe('snapshot table size (qemu-64k)', () => {
    it('128 snapshot entries claiming the longest names: no 64 MiB read for a 17 MB file', async () => {
      // Each entry: 40 bytes, then extra data, id and name of the largest
      // sizes the fields hold; 128 of them need just over 16 MiB.
      const entryBytes = 40 + 1024 + 0xffff + 0xffff + 2; // padded to 8
      const count = 128;
      const path = hostile('long snapshot names', 'qemu-64k', (f, l) => {
        const table = Math.ceil(f.length / l.clusterSize) * l.clusterSize; // past the end: a new cluster
        const out = Buffer.alloc(table + count * entryBytes);
        f.copy(out);
        out.writeUInt32BE(count, H.nb_snapshots);
        out.writeBigUInt64BE(BigInt(table), H.snapshots_offset);
        for (let i = 0; i < count; i++) {
          const at = table + i * entryBytes;
          out.writeBigUInt64BE(BigInt(l.l1Offset), at); // l1_table_offset (the active one)
          out.writeUInt32BE(l.l1Size, at + 8); //         l1_size
          out.writeUInt16BE(0xffff, at + 12); //          id_str_size
          out.writeUInt16BE(0xffff, at + 14); //          name_size
          out.writeUInt32BE(1024, at + 36); //            extra_data_size (QEMU's maximum)
        }
        return out;
      });
      // Refusing is fine, opening is fine: not reading far more than the file holds.
      await bounded(
        () => openQcow2(path).then((img) => img.close()).catch((err: unknown) => expectClear(err, path, 'Corrupt', /snapshot/)),
        // Parsing a 17 MB table legitimately takes tens of MB (names and all): RSS says little here.
        { maxBuffer: statSync(path).size + 1, checkRss: false },
      );
    });
  });

  // --------------------------------------------------------------- tables

  describe.each(['qemu-64k', 'qemu-512', 'platter-64k'] as const)('L1 and L2 entries of %s', (base) => {
    /** Sets L1 entry 0. */
    const l1 = (v: (l: Layout) => bigint) => (f: Buffer, l: Layout) => f.writeBigUInt64BE(v(l), l.l1Offset);
    /** Sets L2 entry 0 (guest cluster 0). */
    const l2 = (v: (l: Layout) => bigint) => (f: Buffer, l: Layout) => f.writeBigUInt64BE(v(l), l.l2Offset);

    const cases: [string, (f: Buffer, l: Layout) => void, ErrorKind, RegExp][] = [
      ['an L1 entry pointing at the L1 table itself', l1((l) => BigInt(l.l1Offset) | COPIED), 'Corrupt', /L2 table at offset \d+ overlaps the L1 table/],
      ['an L1 entry pointing at a refcount block', l1((l) => BigInt(l.refblock) | COPIED), 'Corrupt', /L2 table at offset \d+ overlaps the refcount block/],
      ['an L1 entry pointing at the refcount table', l1((l) => BigInt(l.reftableOffset) | COPIED), 'Corrupt', /L2 table at offset \d+ overlaps the refcount table/],
      ['reserved bits (56-62) in an L1 entry', l1((l) => BigInt(l.l2Offset) | COPIED | (1n << 56n)), 'Corrupt', /L1 entry 0 has reserved bits set/],
      ['reserved bits (1-8) in an L1 entry', l1((l) => BigInt(l.l2Offset) | COPIED | (1n << 1n)), 'Corrupt', /L1 entry 0 has reserved bits set/],
      ['an L1 entry with a huge offset (bit 55)', l1((l) => BigInt(l.l2Offset) | COPIED | (1n << 55n)), 'Corrupt', /L1 entry 0 points at an impossible offset/],
      ['an L2 entry with a huge offset (bit 55)', l2((l) => l.l2Entry0 | (1n << 55n)), 'Corrupt', /guest cluster 0: data at an impossible offset/],
      ['reserved bits (56-61) in an L2 entry', l2((l) => l.l2Entry0 | (1n << 56n)), 'Corrupt', /guest cluster 0: reserved bits are set/],
      ['reserved bits (1-8) in an L2 entry', l2((l) => l.l2Entry0 | (1n << 4n)), 'Corrupt', /guest cluster 0: reserved bits are set/],
    ];
    if (base !== 'qemu-512') {
      cases.push(
        // 512-byte clusters: every offset the entry can hold is aligned.
        ['an L1 entry pointing inside the header (not cluster aligned)', l1(() => 512n | COPIED), 'Corrupt', /L1 entry 0 is not cluster aligned/],
        ['an L2 entry not cluster aligned', l2((l) => l.l2Entry0 + 512n), 'Corrupt', /guest cluster 0: host offset \d+ is not cluster aligned/],
      );
    }

    it.each(cases)('%s: reading it is refused (API, platter convert and map)', async (name, patch, kind, message) => {
      const path = hostile(name, base, patch);
      await expectReadRefused(path, kind, message);
      expectCliRefused('convert', path, message);
      expectCliRefused('map', path, message);
    });

    it('an L2 entry with a huge offset (bit 55) and COPIED: a write is refused and nothing is written', async () => {
      // Node reads and writes a file position above 2^53 at the *current* file
      // position (offset 0 here) instead of failing: the header would be overwritten.
      const path = hostile('huge L2 offset, written', base, l2((l) => l.l2Entry0 | COPIED | (1n << 55n)));
      const before = readFileSync(path);
      const image = await openQcow2(path, false);
      try {
        const err = await bounded(() => rejection(image.write(new Uint8Array(512).fill(0xee), 0)));
        expectClear(err, path, 'Corrupt', /guest cluster 0.*impossible offset/);
      } finally {
        await image.close();
      }
      expect(readFileSync(path).equals(before), 'the image changed').toBe(true);
    });

    it('an L2 entry at 1 PiB without COPIED: the copy-on-write refuses to free it at once, without growing the refcounts', async () => {
      // No refcount block counts 1 PiB: its count is 0, and dropping it is a
      // corruption. Found by the fuzz tests: the refcount table was grown
      // toward 1 PiB first, for 12 s on 512-byte clusters.
      const path = hostile('L2 entry at 1 PiB', base, l2(() => 1n << 50n));
      const size = statSync(path).size;
      const image = await openQcow2(path, false);
      try {
        const err = await bounded(() => rejection(image.write(new Uint8Array(512).fill(0xee), 0)));
        expectClear(err, path, 'Corrupt', /refcount of cluster \d+ would drop below zero/);
      } finally {
        await image.close().catch(() => {});
      }
      const clusterSize = 2 ** readFileSync(path).readUInt32BE(H.cluster_bits);
      expect(statSync(path).size - size, 'the file grew by more than the copied cluster').toBeLessThanOrEqual(clusterSize);
    });

    it('an L1 entry of offset 0 with the COPIED bit (the header is cluster 0) reads as unallocated', async () => {
      const path = hostile('L1 entry 0 copied', base, l1(() => COPIED));
      expect((await readBytes(path, 0, 4096)).every((x) => x === 0)).toBe(true);
    });
  });

  describe.each(['qemu-64k', 'qemu-512', 'platter-64k'] as const)('a data cluster pointing into a refcount block (%s)', (base) => {
    it.each([
      ['with COPIED (written in place)', COPIED],
      ['without COPIED (copy-on-write)', 0n],
    ])('%s: reads return its bytes; a write is refused and only marks the image corrupt', async (_label, copied) => {
      const path = hostile(`data at refblock ${copied ? 'copied' : 'shared'}`, base, (f, l) =>
        f.writeBigUInt64BE(BigInt(l.refblock) | copied, l.l2Offset), // L2 entry 0 -> the refcount block
      );
      const before = readFileSync(path);
      const l = layout(before);
      const checkBefore = qemuCheck(path);
      const cs = l.clusterSize;
      // Reading is harmless: the guest sees the refcount block's bytes.
      expect(Buffer.from(await readBytes(path, 0, cs))).toEqual(before.subarray(l.refblock, l.refblock + cs));
      // Writing through Platter would corrupt the refcounts: refused.
      const image = await openQcow2(path, false);
      try {
        const err = await bounded(() => rejection(image.write(new Uint8Array(512).fill(0xee), 0)));
        expectClear(err, path, 'Corrupt', /(overlaps|holds) (the|a) refcount block/);
      } finally {
        await image.close();
      }
      const after = readFileSync(path);
      expect(after.subarray(l.refblock, l.refblock + cs).equals(before.subarray(l.refblock, l.refblock + cs)), 'refcount block changed').toBe(true);
      // As QEMU does for version 3 images: the corrupt bit is set, nothing else changes.
      const feat = H.incompatible_features;
      expect(after.readBigUInt64BE(feat)).toBe(before.readBigUInt64BE(feat) | (1n << 1n));
      expect(after.subarray(0, feat).equals(before.subarray(0, feat)), 'the header changed').toBe(true);
      expect(after.subarray(feat + 8).equals(before.subarray(feat + 8)), 'the image changed').toBe(true);
      await expect(openQcow2(path, false)).rejects.toMatchObject({ kind: 'Corrupt' });
      const checkAfter = qemuCheck(path);
      expect(checkAfter.corruptions).toBeLessThanOrEqual(checkBefore.corruptions);
      expect(checkAfter.leaks).toBeLessThanOrEqual(checkBefore.leaks);
    });
  });

  // ----------------------------------------------------------- compressed

  describe('compressed clusters (qemu-compressed)', () => {
    /** Fields of a compressed L2 entry: x = 62 - (cluster_bits - 8) bits of offset, then the sector count - 1. */
    const fields = (l: Layout) => {
      const x = BigInt(62 - (l.clusterBits - 8));
      const host = Number(l.l2Entry0 & ((1n << x) - 1n));
      const sectors = Number((l.l2Entry0 >> x) & ((1n << (62n - x)) - 1n)) + 1;
      return { x, host, sectors };
    };

    it('the base is really compressed', () => {
      const l = layout(readFileSync(basePath('qemu-compressed')));
      expect(l.l2Entry0 & COMPRESSED).toBe(COMPRESSED);
    });

    it('a descriptor claiming more sectors than a cluster: reading is refused', async () => {
      const path = hostile('compressed too long', 'qemu-compressed', (f, l) => {
        const { x } = fields(l);
        const allSectors = ((1n << (62n - x)) - 1n) << x; // sector count field at its maximum (128 KiB for 64 KiB clusters)
        f.writeBigUInt64BE(l.l2Entry0 | allSectors, l.l2Offset);
      });
      await expectReadRefused(path, 'Corrupt', /compressed cluster at \d+ claims \d+ bytes/);
      expectCliRefused('convert', path, /compressed cluster at \d+ claims \d+ bytes/);
    });

    it('garbage instead of deflate data: reading is refused as Corrupt', async () => {
      const path = hostile('compressed garbage', 'qemu-compressed', (f, l) => {
        const { host, sectors } = fields(l);
        // 0xff: BFINAL=1, BTYPE=11, a reserved block type; inflate fails at once.
        f.fill(0xff, host, Math.floor(host / 512) * 512 + sectors * 512);
      });
      await expectReadRefused(path, 'Corrupt', /compressed cluster at \d+ does not decompress/);
      expectCliRefused('convert', path, /does not decompress/);
    });

    it('a compressed L2 entry with the COPIED bit: reading is refused', async () => {
      const path = hostile('compressed copied', 'qemu-compressed', (f, l) => f.writeBigUInt64BE(l.l2Entry0 | COPIED, l.l2Offset));
      await expectReadRefused(path, 'Corrupt', /compressed cluster is marked copied/);
      expectCliRefused('map', path, /compressed cluster is marked copied/);
    });
  });

  // ------------------------------------------------------------ truncated

  describe('truncated files', () => {
    it('the first cluster cut in half: reads as zeros (everything else is past the end), as qemu-img does', async () => {
      const path = hostile('half a cluster', 'qemu-64k', (f, l) => f.subarray(0, l.clusterSize / 2));
      expect((await readBytes(path, 0, 128 * KiB)).every((x) => x === 0)).toBe(true);
      const r = cli(['convert', '-f', 'qcow2', '-O', 'raw', path, `${path}.raw`]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    });

    it('the first cluster cut in half: a write must not land on the header (its refcounts are all missing)', async () => {
      const path = hostile('half a cluster, written', 'qemu-64k', (f, l) => f.subarray(0, l.clusterSize / 2));
      const before = readFileSync(path);
      const image = await openQcow2(path, false);
      try {
        // Refusing is fine; succeeding is fine as long as the header survives.
        await bounded(() => image.write(new Uint8Array(4096).fill(0xee), 0).catch((err: unknown) => expectClear(err, path, 'Corrupt', /./)));
      } finally {
        await image.close().catch(() => undefined);
      }
      const after = readFileSync(path);
      expect(after.subarray(0, 512).equals(before.subarray(0, 512)), 'the header was overwritten').toBe(true);
    });
  });
});
