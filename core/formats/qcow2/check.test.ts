/**
 * platter check against qemu-img check on the same damaged images: the same
 * findings, messages, JSON and exit codes; repairs that qemu-img accepts.
 */
import { copyFileSync, openSync, closeSync, writeSync, readFileSync, truncateSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { platter } from '../../test/cli.js';
import { bounded } from '../../test/hostile.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir()));
afterAll(() => t?.cleanup());

/** Writes `bytes` at `offset` of the file. */
function poke(path: string, offset: number, bytes: Buffer): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, bytes, 0, bytes.length, offset);
  closeSync(fd);
}

/** Writes a big-endian u16 at `offset` (a 16-bit refcount entry). */
function poke16(path: string, offset: number, value: number): void {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  poke(path, offset, b);
}

/**
 * A 10 MiB qcow2 from qemu-img with 64 KiB clusters: header (cluster 0),
 * refcount table (1), refcount block at 0x20000 (2), L1 (3), then qemu-io's
 * writes: L2 at cluster 4, data at 5 and 6, compressed data in 7.
 */
function base(name: string): string {
  const p = t.path(name);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '10M']);
  sh('qemu-io', ['-c', 'write 0 64k', '-c', 'write 1M 64k', '-c', 'write -c 2M 64k', p]);
  return p;
}

const REFBLOCK = 0x20000;
const REFTABLE = 0x10000;

/** Writes a big-endian u64 at `offset` (a refcount table entry). */
function poke64(path: string, offset: number, value: bigint): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(value);
  poke(path, offset, b);
}

const CASES: Record<string, (p: string) => void> = {
  clean: () => undefined,
  // One more cluster at the end, counted but used by nothing.
  'a leaked cluster': (p) => {
    truncateSync(p, 9 * 65536);
    poke16(p, REFBLOCK + 8 * 2, 1);
  },
  // The L2 table's refcount is 2: a leak, and its COPIED flag is now wrong.
  'a refcount too high on an L2 table': (p) => poke16(p, REFBLOCK + 4 * 2, 2),
  // A data cluster's refcount is 2 while L2 says COPIED.
  'a refcount too high on a data cluster': (p) => poke16(p, REFBLOCK + 5 * 2, 2),
  // The L2 table's refcount is 0 while it is in use: corruption.
  'an L2 table with refcount 0': (p) => poke16(p, REFBLOCK + 4 * 2, 0),
  // Damaged refcount structures, which -r all rebuilds (as qemu-img does).
  'no refcount block at all': (p) => poke64(p, REFTABLE, 0n),
  'a refcount block outside the image': (p) => poke64(p, REFTABLE, 1n << 40n),
  'a refcount block on the L2 table': (p) => poke64(p, REFTABLE, 0x40000n),
  'a refcount block not cluster aligned': (p) => poke64(p, REFTABLE, BigInt(REFBLOCK + 512)),
  'a refcount table entry with reserved bits set': (p) => poke64(p, REFTABLE, BigInt(REFBLOCK + 1)),
};

/** Where qemu-img's own -r all goes wrong: how (checked, so a qemu-img that gets it right shows up). */
const QEMU_REPAIR_GOES_WRONG: Record<string, (r: { status: number; stderr: string; size: number }) => boolean> = {
  // It grows the file to 1 TiB to reach the block, and keeps it there.
  'a refcount block outside the image': (r) => r.status === 0 && r.size > 2 ** 40,
  // Its rebuild fails on the block it still uses: "ERROR writing refblock", the image left unrepaired.
  'a refcount block not cluster aligned': (r) => r.status === 1 && r.stderr.includes('ERROR writing refblock'),
  'a refcount table entry with reserved bits set': (r) => r.status === 1 && r.stderr.includes('ERROR writing refblock'),
};

describe.skipIf(!HAS_QEMU)('check', () => {
  describe.each(Object.keys(CASES))('%s', (name) => {
    const file = () => t.path(name.replace(/\W+/g, '-') + '.qcow2');
    beforeAll(() => {
      base(file().split('/').pop()!);
      CASES[name](file());
    });

    it('reports what qemu-img reports, with its exit code', async () => {
      const ours = await platter(['check', file()]);
      const theirs = shStatus('qemu-img', ['check', file()]);
      expect(ours.stdout).toBe(theirs.stdout);
      // Each names itself in its last line when the check could not finish.
      expect(ours.stderr.replace(`platter: ${file()}: check failed\n`, '')).toBe(theirs.stderr.replace('qemu-img: Check failed\n', ''));
      expect(ours.code).toBe(theirs.status);
    });

    it('--output=json equals qemu-img check --output=json', async () => {
      const ours = await platter(['check', '--output=json', file()]);
      expect(ours.stdout).toBe(shStatus('qemu-img', ['check', '--output=json', file()]).stdout);
    });

    it('-r all reports what qemu-img check -r all reports, with its exit code, where qemu-img repairs it', async () => {
      const mine = file() + '.mine';
      const theirs = file() + '.theirs';
      copyFileSync(file(), mine);
      copyFileSync(file(), theirs);
      const ours = await platter(['check', '-r', 'all', mine]);
      const qemu = shStatus('qemu-img', ['check', '-r', 'all', theirs]);
      const qemuGoesWrong = QEMU_REPAIR_GOES_WRONG[name];
      if (qemuGoesWrong) {
        // Platter's report differs there on purpose: it rebuilds the structures and is done.
        expect(qemuGoesWrong({ ...qemu, size: statSync(theirs).size })).toBe(true);
        expect(ours.code).toBe(0);
        return;
      }
      expect(ours.stdout).toBe(qemu.stdout);
      expect(ours.stderr).toBe(qemu.stderr);
      expect(ours.code).toBe(qemu.status);
    });

    it('-r all leaves an image qemu-img finds clean, data unchanged', async () => {
      const copy = file() + '.fix';
      copyFileSync(file(), copy);
      sh('qemu-img', ['convert', '-O', 'raw', file(), copy + '.raw']);
      const r = await platter(['check', '-r', 'all', copy]);
      expect(r.code).toBe(0);
      expect(shStatus('qemu-img', ['check', copy]).status).toBe(0);
      expect(shStatus('qemu-img', ['compare', copy, copy + '.raw']).status).toBe(0);
    });
  });

  it('-r leaks repairs exactly as qemu-img does (byte-identical files, same report)', async () => {
    const a = base('leak-a.qcow2');
    CASES['a leaked cluster'](a);
    const b = t.path('leak-b.qcow2');
    copyFileSync(a, b);
    const ours = await platter(['check', '-r', 'leaks', a]);
    const theirs = shStatus('qemu-img', ['check', '-r', 'leaks', b]);
    expect(ours.stdout).toBe(theirs.stdout);
    expect(ours.stderr).toBe(theirs.stderr);
    expect(ours.code).toBe(theirs.status);
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
  });

  it('-r leaks leaves corruptions alone and says so (exit 2)', async () => {
    // A snapshot shares the data clusters (refcount 2); one of them now says 1.
    const p = base('corrupt-only-leaks.qcow2');
    sh('qemu-img', ['snapshot', '-c', 'one', p]);
    const counts = readFileSync(p).subarray(REFBLOCK, REFBLOCK + 64);
    const shared = [...Array(32).keys()].find((c) => counts.readUInt16BE(2 * c) === 2)!;
    poke16(p, REFBLOCK + 2 * shared, 1);
    const r = await platter(['check', '-r', 'leaks', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`ERROR cluster ${shared} refcount=1 reference=2`);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(2);
  });

  it('-r leaks refuses where the refcount structures need a rebuild, as qemu-img does (exit 1)', async () => {
    const p = base('needs-rebuild.qcow2');
    CASES['an L2 table with refcount 0'](p);
    const copy = p + '.qemu';
    copyFileSync(p, copy);
    const ours = await platter(['check', '-r', 'leaks', p]);
    const theirs = shStatus('qemu-img', ['check', '-r', 'leaks', copy]);
    expect(ours.code).toBe(theirs.status);
    expect(ours.stderr).toContain('ERROR need to rebuild refcount structures');
    expect(theirs.stderr).toContain('ERROR need to rebuild refcount structures');
    expect(readFileSync(p).equals(readFileSync(copy))).toBe(true);
  });

  it('-r all rebuilds a refcount structure that calls clusters in use free, without overwriting them', async () => {
    // 4 KiB clusters: the second refcount block counts clusters 2048-4095, which hold data.
    // Mending its counts in place would put a new block on the first cluster it calls free.
    const p = t.path('lost-block.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', p, '16M']);
    sh('qemu-io', ['-c', 'write -P 0x5a 0 12M', p]);
    sh('qemu-img', ['convert', '-O', 'raw', p, p + '.raw']);
    const reftable = Number(readFileSync(p).readBigUInt64BE(48));
    poke64(p, reftable + 8, 0n);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(2);
    const r = await platter(['check', '-r', 'all', p]);
    expect(r.stderr).toContain('Rebuilding refcount structure');
    expect(r.code).toBe(0);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(0);
    expect(shStatus('qemu-img', ['compare', p, p + '.raw']).status).toBe(0);
  });

  it('an L1 entry with flags but no L2 table: reported, and cleared by -r all (qemu-img would read the header as its L2 table)', async () => {
    const p = t.path('flags-only-l1.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '1G']);
    sh('qemu-io', ['-c', 'write -P 7 0 64k', p]);
    sh('qemu-img', ['convert', '-O', 'raw', p, p + '.raw']);
    poke64(p, 0x30000 + 8, 1n << 63n);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(2);
    const found = await platter(['check', p]);
    expect(found.code).toBe(2);
    expect(found.stderr).toContain('ERROR L1 entry 1 has flags set but no L2 table: 0x8000000000000000');
    expect((await platter(['check', '-r', 'all', p])).code).toBe(0);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(0);
    expect(shStatus('qemu-img', ['compare', p, p + '.raw']).status).toBe(0);
  });

  it('compressed data running less than a cluster past the end of the file is counted there, as qemu-img counts it', async () => {
    // 4 KiB clusters, packed compressed data: cut the file at cluster 10, whose
    // data then lies past the end, and call that cluster free.
    const raw = t.path('text.raw');
    writeFileSync(raw, Buffer.alloc(2 << 20, 'platter check text '));
    const p = t.path('cut-compressed.qcow2');
    sh('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4k', raw, p]);
    truncateSync(p, 10 * 4096);
    const file = readFileSync(p);
    const refblock = Number(file.readBigUInt64BE(Number(file.readBigUInt64BE(48))));
    poke16(p, refblock + 10 * 2, 0);
    const theirs = shStatus('qemu-img', ['check', p]);
    expect(theirs.stderr).toMatch(/^ERROR cluster 10 refcount=0 reference=\d+$/m);
    const ours = await platter(['check', p]);
    expect(ours.stdout).toBe(theirs.stdout);
    expect(ours.stderr).toBe(theirs.stderr);
    expect(ours.code).toBe(theirs.status);
    expect((await platter(['check', '-r', 'all', p])).code).toBe(0);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(0);
  });

  it('a version 3 snapshot table entry with less than 16 bytes of extra data: reported as qemu-img does, rewritten by -r all', async () => {
    const p = base('short-extra.qcow2');
    sh('qemu-img', ['snapshot', '-c', 'one', p]);
    const table = Number(readFileSync(p).readBigUInt64BE(64));
    const extra = Buffer.alloc(4);
    extra.writeUInt32BE(8);
    poke(p, table + 36, extra);
    const theirs = shStatus('qemu-img', ['check', p]);
    expect(theirs.stderr).toBe('ERROR snapshot table entry 0 is incomplete\n');
    const ours = await platter(['check', p]);
    expect([ours.stdout, ours.stderr, ours.code]).toEqual([theirs.stdout, theirs.stderr, theirs.status]);
    const fixed = await platter(['check', '-r', 'all', p]);
    expect(fixed.stderr).toBe('Repairing snapshot table entry 0 is incomplete\n');
    expect(fixed.code).toBe(0);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(0);
  });

  it('a file grown sparse to 1 TiB: the same report as qemu-img, quickly and in little memory', async () => {
    // 4 KiB clusters: 2^28 clusters of file, nearly all holes nothing references.
    const p = t.path('sparse-tail.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', p, '10M']);
    sh('qemu-io', ['-c', 'write 0 64k', p]);
    truncateSync(p, 2 ** 40);
    const ours = await bounded(() => platter(['check', p]), { quickMs: 5_000, memoryLimit: 64 << 20 });
    expect(ours.stdout).toBe(shStatus('qemu-img', ['check', p]).stdout);
    expect(ours.code).toBe(0);
  });

  it('images Platter writes check clean in both tools', async () => {
    const raw = t.path('src.raw');
    sh('qemu-img', ['create', '-q', '-f', 'raw', raw, '8M']);
    sh('qemu-io', ['-f', 'raw', '-c', 'write -P 7 100k 3M', '-c', 'write -P 9 6M 5k', raw]);
    const out = t.path('platter.qcow2');
    expect((await platter(['convert', '-O', 'qcow2', '-o', 'cluster_size=4k', raw, out])).code).toBe(0);
    expect((await platter(['check', out])).code).toBe(0);
    expect(shStatus('qemu-img', ['check', out]).status).toBe(0);
  });

  it('-r all lifts the corrupt mark once the image is consistent (and only then writes)', async () => {
    const p = base('marked.qcow2');
    const fd = openSync(p, 'r+');
    writeSync(fd, Buffer.from([2]), 0, 1, 79); // incompatible_features, bit 1: corrupt
    closeSync(fd);
    const corrupt = () => JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['format-specific'].data.corrupt;
    expect(corrupt()).toBe(true);
    expect((await platter(['check', p])).code).toBe(0);
    expect(corrupt()).toBe(true);
    expect((await platter(['check', '-r', 'all', p])).code).toBe(0);
    expect(corrupt()).toBe(false);
    expect(shStatus('qemu-img', ['check', p]).status).toBe(0);
  });

  it('formats without metadata answer exit 63, as qemu-img does', async () => {
    const raw = t.path('plain.raw');
    sh('qemu-img', ['create', '-q', '-f', 'raw', raw, '1M']);
    const r = await platter(['check', raw]);
    expect(r.code).toBe(63);
    expect(r.code).toBe(shStatus('qemu-img', ['check', '-f', 'raw', raw]).status);
    expect(r.stderr).toBe(`platter: ${raw}: raw images have no metadata to check\n`);
  });

  it('fragmentation is counted per L2 table, as qemu-img counts it', async () => {
    // 512-byte clusters: 64 entries per L2 table, so the writes span several tables.
    const p = t.path('fragmented.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', p, '1M']);
    sh('qemu-io', ['-c', 'write 100k 64k', '-c', 'write 40k 8k', '-c', 'write 300k 64k', '-c', 'write 120k 4k', p]);
    for (const args of [['check', p], ['check', '--output=json', p]]) {
      expect((await platter(args)).stdout).toBe(shStatus('qemu-img', args).stdout);
    }
  });

  it('rejects a bad -r value', async () => {
    const r = await platter(['check', '-r', 'some', t.path('x')]);
    expect(r.stderr).toBe("platter: -r must be leaks or all, not 'some'\n");
  });
});
