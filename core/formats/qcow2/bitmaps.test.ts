/**
 * Persistent dirty bitmaps against QEMU: info and check say what qemu-img
 * says, measure sizes them alike, and Platter's writes leave every enabled
 * bitmap exactly as QEMU's same writes leave it (judged by qemu-nbd's
 * dirty-bitmap export, read with nbdinfo), disabled ones untouched.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import type { Qcow2Image } from './image.js';
import { EXT_BITMAPS } from './limits.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const HAS_NBDINFO = HAS_QEMU && hasTool('nbdinfo', 'apt-get install libnbd-bin');
let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir()));
afterAll(() => t?.cleanup());

/** A qcow2 image with bitmaps made by qemu-img: [name, ...options] each. */
function withBitmaps(name: string, size: string, createOpts: string, bitmaps: string[][]): string {
  const p = t.path(name);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', createOpts, p, size]);
  for (const [bm, ...opts] of bitmaps) sh('qemu-img', ['bitmap', '--add', ...opts, p, bm]);
  return p;
}

function copy(p: string, name: string): string {
  const q = t.path(name);
  copyFileSync(p, q);
  return q;
}

/** The bitmaps extension's place in the header, and the directory's. */
function layout(p: string) {
  const f = readFileSync(p);
  let at = f.readUInt32BE(100);
  for (;;) {
    const type = f.readUInt32BE(at);
    if (type === 0) throw new Error('no bitmaps extension');
    if (type === EXT_BITMAPS) return { ext: at + 8, dir: Number(f.readBigUInt64BE(at + 8 + 16)) };
    at += 8 + Math.ceil(f.readUInt32BE(at + 4) / 8) * 8;
  }
}

/** Overwrites bytes of the file in place. */
function patch(p: string, offset: number, bytes: number[] | Buffer): void {
  const f = readFileSync(p);
  Buffer.from(bytes).copy(f, offset);
  writeFileSync(p, f);
}

const qemuIo = (p: string, ...cmds: string[]) => sh('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), p]);

/** The bitmap's dirty ranges as qemu-nbd exports them. */
const dirtyMap = (p: string, bitmap: string) =>
  sh('nbdinfo', [`--map=qemu:dirty-bitmap:${bitmap}`, '--', '[', 'qemu-nbd', '-r', '-f', 'qcow2', '-B', bitmap, p, ']']);

/** What qemu-img info --output=json says of the bitmaps. */
const bitmapsInfo = (p: string) => JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['format-specific'].data.bitmaps;

describe.skipIf(!HAS_QEMU)('qcow2 bitmaps: info, check, measure', () => {
  let plain: string;
  beforeAll(() => {
    plain = withBitmaps('plain.qcow2', '64M', 'cluster_size=65536', [['b1'], ['b 2', '-g', '1M', '--disable'], ['fine', '-g', '512']]);
    qemuIo(plain, 'write -P 7 100k 300k');
  });

  const inUse = () => {
    // A crash while QEMU had it open: the first bitmap's in_use flag is left set.
    const p = copy(plain, 'inuse.qcow2');
    patch(p, layout(p).dir + 15, [0x03]);
    return p;
  };
  const stale = () => {
    // A program that knows nothing of bitmaps wrote it: the autoclear bit is clear.
    const p = copy(plain, 'stale.qcow2');
    patch(p, 95, [0]);
    return p;
  };

  it.each([
    ['enabled, disabled and fine bitmaps', () => plain],
    ['a bitmap left in use', inUse],
    ['a stale extension', stale],
  ])('info (human and JSON) is qemu-img info, byte for byte: %s', async (_, make) => {
    const p = make();
    for (const output of ['human', 'json']) {
      const ours = await platter(['info', `--output=${output}`, p]);
      expect(ours.code).toBe(0);
      expect(ours.stdout).toBe(sh('qemu-img', ['info', `--output=${output}`, p]));
    }
  });

  it('lists the flags as qemu-img does', () => {
    expect(bitmapsInfo(inUse())[0]).toEqual({ flags: ['in-use', 'auto'], name: 'b1', granularity: 65536 });
  });

  it.each([
    ['enabled, disabled and fine bitmaps', () => plain],
    ['a bitmap left in use', inUse],
    ['a stale extension (its clusters leak)', stale],
  ])('check says what qemu-img check says: %s', async (_, make) => {
    const p = make();
    const ours = await platter(['check', p]);
    const theirs = shStatus('qemu-img', ['check', p]);
    expect(ours.stdout).toBe(theirs.stdout);
    expect(ours.code).toBe(theirs.status);
  });

  it('an in-use bitmap with an invalid table: check fails, as qemu-img check does', async () => {
    const p = inUse();
    const table = Number(readFileSync(p).readBigUInt64BE(layout(p).dir));
    patch(p, table, [0, 0, 0, 0, 0, 0, 0x10, 0x02]);
    // Opening does not look at an in-use bitmap's table (QEMU does not either).
    expect((await platter(['info', p])).stdout).toBe(sh('qemu-img', ['info', p]));
    expect(shStatus('qemu-img', ['check', p]).status).toBe(1);
    const r = await platter(['check', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^platter: .*inuse\.qcow2: bitmap 'b1' has an invalid bitmap table entry 0/);
  });

  it('a snapshot is not applied to an image with bitmaps, as qemu-img refuses', async () => {
    const p = copy(plain, 'snapshot.qcow2');
    sh('qemu-img', ['snapshot', '-c', 's1', p]);
    expect(shStatus('qemu-img', ['snapshot', '-a', 's1', p]).status).toBe(1);
    const r = await platter(['snapshot', '-a', 's1', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/persistent dirty bitmaps/);
    // Creating and deleting snapshots leaves them intact.
    expect((await platter(['snapshot', '-c', 's2', p])).code).toBe(0);
    expect((await platter(['snapshot', '-d', 's1', p])).code).toBe(0);
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
    expect(bitmapsInfo(p)).toEqual(bitmapsInfo(plain));
    if (HAS_NBDINFO) for (const b of ['b1', 'fine']) expect(dirtyMap(p, b)).toBe(dirtyMap(plain, b));
  });

  it('check -r all keeps the bitmaps and their content', async () => {
    const p = copy(plain, 'repair.qcow2');
    // A leaked cluster for the repair to reclaim.
    const f = readFileSync(p);
    writeFileSync(p, Buffer.concat([f, Buffer.alloc(65536)]));
    sh('qemu-img', ['check', '-r', 'leaks', p]);
    const before = bitmapsInfo(p);
    const r = await platter(['check', '-r', 'all', p]);
    expect(r.code).toBe(0);
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
    expect(bitmapsInfo(p)).toEqual(before);
    if (HAS_NBDINFO) for (const b of ['b1', 'fine']) expect(dirtyMap(p, b)).toBe(dirtyMap(plain, b));
  });

  it('check -r all reclaims what a stale extension left, as qemu-img does', async () => {
    const ours = stale();
    const theirs = copy(ours, 'stale-qemu.qcow2');
    expect((await platter(['check', '-r', 'all', ours])).code).toBe(0);
    shStatus('qemu-img', ['check', '-r', 'all', theirs]);
    expect(problems(qemuCheck(ours))).toEqual(CLEAN);
    // The same image but for its name and disk usage (qemu punches holes where it frees).
    const described = (p: string) => {
      const { filename: _, 'actual-size': __, ...rest } = JSON.parse(sh('qemu-img', ['info', '--output=json', p]));
      return rest;
    };
    expect(described(ours)).toEqual(described(theirs));
    expect(sh('qemu-img', ['check', ours])).toBe(sh('qemu-img', ['check', theirs]));
  });

  it('measure of a version 2 source has no bitmaps size, as qemu-img measure', async () => {
    const p = t.path('v2.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p, '8M']);
    const args = ['measure', '-O', 'qcow2', p];
    expect((await platter(args)).stdout).toBe(sh('qemu-img', args));
  });

  it.each([[[]], [['-o', 'cluster_size=4096']], [['-o', 'compat=0.10']], [['--output=json']], [['-O', 'raw']]])(
    'measure sizes the bitmaps as qemu-img measure: %j',
    async (opts) => {
      const args = ['measure', '-O', 'qcow2', ...opts, plain];
      const ours = await platter(args);
      expect(ours.code).toBe(0);
      expect(ours.stdout).toBe(sh('qemu-img', args));
      },
  );
});

describe.skipIf(!HAS_QEMU)('qcow2 bitmaps: hostile extensions and directories', () => {
  let base: string;
  beforeAll(() => {
    base = withBitmaps('hostile-base.qcow2', '16M', 'cluster_size=4096', [['b1']]);
  });

  // Each is a change to one field; qemu-img refuses them all too.
  const cases: [string, (p: string, l: ReturnType<typeof layout>) => void][] = [
    ['nb_bitmaps huge', (p, l) => patch(p, l.ext, [0, 1, 0x11, 0x70])],
    ['nb_bitmaps zero', (p, l) => patch(p, l.ext, [0, 0, 0, 0])],
    ['nb_bitmaps more than the directory holds', (p, l) => patch(p, l.ext, [0, 0, 0, 2])],
    ['reserved field set', (p, l) => patch(p, l.ext + 7, [1])],
    ['directory size over 64 MiB', (p, l) => patch(p, l.ext + 8, [0, 0, 0, 0, 0x04, 0, 0, 0])],
    ['directory offset misaligned', (p, l) => patch(p, l.ext + 23, [0x08])],
    ['directory past the end of the file', (p, l) => patch(p, l.ext + 16, [0, 0, 0, 1, 0, 0, 0, 0])],
    ['name length past the directory', (p, l) => patch(p, l.dir + 18, [0x01, 0x00])],
    ['granularity_bits 0', (p, l) => patch(p, l.dir + 17, [0])],
    ['granularity_bits 64', (p, l) => patch(p, l.dir + 17, [64])],
    ['unknown type', (p, l) => patch(p, l.dir + 16, [2])],
    ['reserved flag (extra_data_compatible)', (p, l) => patch(p, l.dir + 15, [0x06])],
    ['extra data', (p, l) => patch(p, l.dir + 23, [8])],
    ['bitmap table offset misaligned', (p, l) => patch(p, l.dir + 7, [0x08])],
    ['bitmap table empty', (p, l) => patch(p, l.dir + 8, [0, 0, 0, 0])],
    ['bitmap table of the wrong size for the image', (p, l) => patch(p, l.dir + 11, [2])],
    [
      'bitmap table entry with reserved bits',
      (p, l) => {
        const table = Number(readFileSync(p).readBigUInt64BE(l.dir));
        patch(p, table, [0, 0, 0, 0, 0, 0, 0x10, 0x02]);
      },
    ],
  ];

  it('a guest cluster mapped onto the bitmap directory is never written (the image is marked corrupt)', async () => {
    const p = copy(base, 'onto-directory.qcow2');
    qemuIo(p, 'write -P 1 0 4k');
    const f = readFileSync(p);
    const l2 = Number(f.readBigUInt64BE(Number(f.readBigUInt64BE(40))) & 0x00fffffffffffe00n);
    const dir = layout(p).dir;
    patch(p, l2, Buffer.from((0x8000000000000000n | BigInt(dir)).toString(16).padStart(16, '0'), 'hex'));
    const before = Buffer.from(readFileSync(p).subarray(dir, dir + 4096));
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    await expect(img.write(new Uint8Array(4096).fill(9), 0)).rejects.toThrow(/bitmap directory/);
    await img.close();
    // Only the in_use flag changed (set before the write was tried); a corrupt image is not written on close.
    before[15] |= 1;
    expect(readFileSync(p).subarray(dir, dir + 4096).equals(before)).toBe(true);
    const data = JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['format-specific'].data;
    expect(data.corrupt).toBe(true);
    expect(data.bitmaps[0].flags).toEqual(['in-use', 'auto']);
  });

  // qemu-img reads such a table as zeros; Platter refuses it, which bounds
  // the work a hostile directory can cause (65535 tables of 8 MiB).
  const stricter: typeof cases = [['bitmap table past the end of the file', (p, l) => patch(p, l.dir + 4, [0x10])]];

  it.each([...cases.map((c) => [...c, true] as const), ...stricter.map((c) => [...c, false] as const)])(
    '%s: a one-line error (qemu-img refuses it too: %s)',
    async (name, change, qemuRefuses) => {
      const p = copy(base, `hostile-${name.replace(/\W+/g, '-')}.qcow2`);
      change(p, layout(p));
      expect(shStatus('qemu-img', ['info', p]).status !== 0).toBe(qemuRefuses);
      for (const args of [['info', p], ['check', p]]) {
        const r = await platter(args);
        expect(r.code).not.toBe(0);
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
        expect(r.stderr).toMatch(/^platter: .*bitmap/);
      }
      await expect(openImage(p, { format: 'qcow2', readOnly: false })).rejects.toThrow(/bitmap/);
    },
  );
});

describe.skipIf(!HAS_NBDINFO)('qcow2 bitmaps: Platter writes are recorded as QEMU records them', () => {
  const BITMAPS = [['on'], ['coarse', '-g', '1M'], ['fine', '-g', '512'], ['off', '--disable']];

  /** The same guest writes through qemu-io and through Platter's engine. */
  const steps: { qemu: string; ours: (img: Awaited<ReturnType<typeof openImage>>) => Promise<void> }[][] = [
    [
      { qemu: 'write -P 7 100k 300k', ours: (img) => img.write(new Uint8Array(300 << 10).fill(7), 100 << 10) },
      { qemu: 'write -z 5M 1M', ours: (img) => img.writeZeroes(5 << 20, 1 << 20, false) },
      { qemu: 'write -z -u 7000k 2M', ours: (img) => img.writeZeroes(7000 << 10, 2 << 20, true) },
      { qemu: 'discard 10001k 65k', ours: (img) => img.discard(10001 << 10, 65 << 10) },
      { qemu: 'write -P 1 67107840 1024', ours: (img) => img.write(new Uint8Array(1024).fill(1), 67107840) },
    ],
    [
      { qemu: 'write -P 9 390k 10k', ours: (img) => img.write(new Uint8Array(10 << 10).fill(9), 390 << 10) },
      { qemu: 'write -P 3 40M 3000', ours: (img) => img.write(new Uint8Array(3000).fill(3), 40 << 20) },
    ],
  ];

  async function platterSession(p: string, session: (typeof steps)[number]) {
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    for (const s of session) await s.ours(img);
    await img.close();
  }

  it.each(['cluster_size=65536', 'cluster_size=512', 'cluster_size=4096,refcount_bits=1'])(
    'two sessions of writes (%s): same bitmaps as QEMU, check clean, disabled untouched',
    async (opts) => {
      const start = withBitmaps(`w-${opts.replace(/\W+/g, '-')}.qcow2`, '64M', opts, BITMAPS);
      // Bits set before Platter arrives: Platter must keep them.
      qemuIo(start, 'write -P 5 20M 64k');
      const theirs = copy(start, 'w-qemu.qcow2');
      const ours = copy(start, 'w-ours.qcow2');
      for (const session of steps) {
        qemuIo(theirs, ...session.map((s) => s.qemu));
        await platterSession(ours, session);
        expect(problems(qemuCheck(ours))).toEqual(CLEAN);
        expect(bitmapsInfo(ours)).toEqual(bitmapsInfo(theirs));
        for (const [b] of BITMAPS) expect(dirtyMap(ours, b), b).toBe(dirtyMap(theirs, b));
      }
      expect(dirtyMap(ours, 'off')).toBe(dirtyMap(start, 'off'));
      // And QEMU carries on from what Platter stored.
      qemuIo(theirs, 'write 50M 4k');
      qemuIo(ours, 'write 50M 4k');
      expect(problems(qemuCheck(ours))).toEqual(CLEAN);
      for (const [b] of BITMAPS) expect(dirtyMap(ours, b), b).toBe(dirtyMap(theirs, b));
      expect((await platter(['check', ours])).stdout).toBe(sh('qemu-img', ['check', ours]));
    },
  );

  it('bitmaps enabled, disabled and cleared by qemu-img bitmap, and an all-ones table entry, end as in QEMU', async () => {
    const start = withBitmaps('toggled.qcow2', '64M', 'cluster_size=512', [
      ['was-on'],
      ['was-off', '--disable'],
      ['cleared'],
      ['ones', '-g', '512'],
    ]);
    qemuIo(start, 'write 1M 64k');
    sh('qemu-img', ['bitmap', '--disable', start, 'was-on']);
    sh('qemu-img', ['bitmap', '--enable', start, 'was-off']);
    sh('qemu-img', ['bitmap', '--clear', start, 'cleared']);
    // Entry 5 of 'ones' (guest 10 MiB to 12 MiB, no data cluster yet) says "all ones".
    const f = readFileSync(start);
    let dir = layout(start).dir;
    for (let i = 0; i < 3; i++) dir += Math.ceil((24 + f.readUInt16BE(dir + 18)) / 8) * 8;
    const table = Number(f.readBigUInt64BE(dir));
    expect(f.readBigUInt64BE(table + 5 * 8)).toBe(0n);
    patch(start, table + 5 * 8 + 7, [1]);
    const theirs = copy(start, 'toggled-qemu.qcow2');
    const ours = copy(start, 'toggled-ours.qcow2');
    qemuIo(theirs, 'write 11M 4k', 'write 20M 4k');
    const img = await openImage(ours, { format: 'qcow2', readOnly: false });
    await img.write(new Uint8Array(4096), 11 << 20);
    await img.write(new Uint8Array(4096), 20 << 20);
    await img.close();
    expect(problems(qemuCheck(ours))).toEqual(CLEAN);
    expect(bitmapsInfo(ours)).toEqual(bitmapsInfo(theirs));
    for (const b of ['was-on', 'was-off', 'cleared', 'ones']) expect(dirtyMap(ours, b), b).toBe(dirtyMap(theirs, b));
    expect(dirtyMap(ours, 'ones')).toMatch(/10485760\s+2097152\s+1\s+dirty/);
  });

  it('a crash leaves the bitmaps in use, never wrong; they stay so, like QEMU keeps them', async () => {
    const p = withBitmaps('crash.qcow2', '16M', 'cluster_size=4096', [['on']]);
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    await img.write(new Uint8Array(4096).fill(1), 0);
    // No close: as if the process died here. The write's mapping may not
    // have reached the file (its cluster then leaks), never a corruption.
    const noCorruption = () => {
      const c = qemuCheck(p);
      expect({ corruptions: c.corruptions, checkErrors: c.checkErrors }, c.text).toEqual({ corruptions: 0, checkErrors: 0 });
    };
    expect(bitmapsInfo(p)[0].flags).toEqual(['in-use', 'auto']);
    noCorruption();
    // Reopened, an in-use bitmap is left alone: still in use after more writes.
    const again = await openImage(p, { format: 'qcow2', readOnly: false });
    await again.write(new Uint8Array(4096).fill(2), 1 << 20);
    await again.close();
    expect(bitmapsInfo(p)[0].flags).toEqual(['in-use', 'auto']);
    noCorruption();
  });

  it.each([
    ['before the header points at the new directory', 'in use'],
    ['after the header points at it, before the old clusters are freed', 'stored'],
  ])('a crash while storing, %s, leaves the bitmap %s, never wrong', async (_, outcome) => {
    const start = withBitmaps(`store-crash-${outcome.replace(' ', '-')}.qcow2`, '16M', 'cluster_size=4096', [['on']]);
    const theirs = copy(start, 'store-crash-qemu.qcow2');
    qemuIo(theirs, 'write 1M 4k');
    const img = await openImage(start, { format: 'qcow2', readOnly: false });
    await img.write(new Uint8Array(4096).fill(1), 1 << 20);
    // The process dies at the header write, or at the first write after it.
    const proto = (img.layer as Qcow2Image).proto;
    const write = proto.write.bind(proto);
    let headerWritten = false;
    proto.write = async (buf, offset) => {
      if (headerWritten || (offset === 0 && outcome === 'in use')) throw new Error('simulated crash');
      await write(buf, offset);
      if (offset === 0) headerWritten = true;
    };
    await expect(img.close()).rejects.toThrow(/simulated crash/);
    const check = qemuCheck(start);
    expect(check.corruptions, check.text).toBe(0);
    expect(check.checkErrors, check.text).toBe(0);
    if (outcome === 'in use') expect(bitmapsInfo(start)[0].flags).toEqual(['in-use', 'auto']);
    else {
      expect(bitmapsInfo(start)[0].flags).toEqual(['auto']);
      expect(dirtyMap(start, 'on')).toBe(dirtyMap(theirs, 'on'));
    }
    // What leaked, check -r all reclaims; the bitmap stays as it was left.
    expect((await platter(['check', '-r', 'all', start])).code).toBe(0);
    expect(problems(qemuCheck(start))).toEqual(CLEAN);
  });

  it.each([[[]], [['-c']]])('the CLI: convert -n %j into an image marks what it wrote, as qemu-img convert -n', async (opts) => {
    const start = withBitmaps(`convert-n${opts.join('')}.qcow2`, '8M', 'cluster_size=65536', [['on'], ['off', '--disable']]);
    const src = t.path('convert-src.raw');
    writeFileSync(src, Buffer.concat([Buffer.alloc(1 << 20, 6), Buffer.alloc(7 << 20)]));
    const ours = copy(start, 'convert-ours.qcow2');
    const theirs = copy(start, 'convert-qemu.qcow2');
    const r = await platter(['convert', '-n', ...opts, '-f', 'raw', '-O', 'qcow2', src, ours]);
    expect(r.code, r.stderr).toBe(0);
    sh('qemu-img', ['convert', '-n', ...opts, '-f', 'raw', '-O', 'qcow2', src, theirs]);
    expect(problems(qemuCheck(ours))).toEqual(CLEAN);
    for (const b of ['on', 'off']) expect(dirtyMap(ours, b)).toBe(dirtyMap(theirs, b));
  });

  it.each([
    ['grows', '20M', []],
    ['shrinks', '5M', ['--shrink']],
    ['shrinks inside a bitmap cluster', '8001k', ['--shrink']],
  ])('resize %s every bitmap with the image, as qemu-img resize does', async (_, size, opts) => {
    const start = withBitmaps(`resize-${size}.qcow2`, '8M', 'cluster_size=512', [
      ['on'],
      ['fine', '-g', '512'],
      ['off', '-g', '4096', '--disable'],
    ]);
    qemuIo(start, 'write 1M 64k', 'write 8000k 192k');
    const ours = copy(start, 'resize-ours.qcow2');
    const theirs = copy(start, 'resize-qemu.qcow2');
    expect((await platter(['resize', ...opts, ours, size])).code).toBe(0);
    sh('qemu-img', ['resize', '-q', ...opts, theirs, size]);
    expect(problems(qemuCheck(ours))).toEqual(CLEAN);
    expect(bitmapsInfo(ours)).toEqual(bitmapsInfo(theirs));
    for (const b of ['on', 'fine', 'off']) expect(dirtyMap(ours, b), b).toBe(dirtyMap(theirs, b));
    // Grown back, no stale bits reappear past the old end.
    if (opts.length) {
      sh('qemu-img', ['resize', '-q', ours, '8M']);
      sh('qemu-img', ['resize', '-q', theirs, '8M']);
      for (const b of ['on', 'fine', 'off']) expect(dirtyMap(ours, b), b).toBe(dirtyMap(theirs, b));
    }
  });

  it('resize refuses an image with an inconsistent bitmap, as qemu-img does', async () => {
    const p = withBitmaps('resize-inuse.qcow2', '8M', 'cluster_size=65536', [['on']]);
    patch(p, layout(p).dir + 15, [0x03]);
    expect(shStatus('qemu-img', ['resize', p, '16M']).status).toBe(1);
    const r = await platter(['resize', p, '16M']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/bitmap 'on' is inconsistent/);
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['virtual-size']).toBe(8 << 20);
  });
});
